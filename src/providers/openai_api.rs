//! [`OpenAiApi`]: OpenAI's API, or a compatible server, as the OpenAI
//! adapters reach it: the base URL and bearer key checked, over the shared
//! HTTP machinery of `http_api` (timeouts, the single retry,
//! error mapping).

use palaver_actors::ports::ProviderError;

use super::http_api::{HttpApi, KeyHeader, ProviderEndpoint, Timeouts};
use crate::config::ProviderSettings;

/// The `provider` of every error these adapters report.
pub(crate) const PROVIDER: &str = "openai";

/// OpenAI's own host, where a key is mandatory.
const OPENAI_HOST: &str = "api.openai.com";

/// A configured OpenAI-compatible API. Cheap to clone: clones share the
/// connection pool.
#[derive(Debug, Clone)]
pub struct OpenAiApi {
    http: HttpApi,
}

impl OpenAiApi {
    /// Checks the settings and builds the HTTP client. Fails with
    /// [`ProviderError::Unavailable`] when the base URL is not a URL, or is
    /// OpenAI's own and no key is set.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let endpoint = ProviderEndpoint {
            provider: PROVIDER,
            url_setting: "providers.openai_base_url",
            url: &settings.openai_base_url,
            api_key: settings.openai_api_key.as_ref(),
            own_host: OPENAI_HOST,
            key_hint: "OPENAI_API_KEY or providers.openai_api_key",
        };
        let http = HttpApi::new(
            endpoint,
            KeyHeader::Bearer,
            Timeouts::from_settings(settings),
        )?;
        Ok(Self { http })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.http.timeouts()
    }

    /// The HTTP API the adapters call.
    pub(crate) fn into_http(self) -> HttpApi {
        self.http
    }
}

pub(crate) fn protocol(message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol {
        provider: PROVIDER,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn openai_without_a_key_is_unavailable_but_other_servers_are_not() {
        let mut settings = ProviderSettings::default();
        let err = OpenAiApi::new(&settings).expect_err("no key");
        assert_eq!(err.code(), "provider_unavailable");
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        settings.openai_base_url = "http://127.0.0.1:11434/v1/".to_owned();
        let api = OpenAiApi::new(&settings).expect("keyless local server");
        assert_eq!(api.http.base_url(), "http://127.0.0.1:11434/v1");
        settings.openai_base_url = "not a url".to_owned();
        assert!(OpenAiApi::new(&settings).is_err());
    }

    #[test]
    fn an_echoed_key_is_redacted() {
        let settings = ProviderSettings {
            openai_api_key: Some(Secret::new("sk-live-123")),
            ..ProviderSettings::default()
        };
        let api = OpenAiApi::new(&settings).expect("api");
        assert_eq!(
            api.http.redact("bad key sk-live-123".to_owned()),
            "bad key ***"
        );
        assert!(!format!("{api:?}").contains("sk-live-123"));
    }
}
