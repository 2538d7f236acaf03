"""Schemathesis hooks for scripts/contract-test.sh.

A WebRTC offer (`POST /v1/sessions/{id}/webrtc`) is `application/sdp`:
text, sent as schemathesis sends `text/plain`.
"""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
