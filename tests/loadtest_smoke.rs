//! The load-test harness against a real server: a short run must finish with
//! zero failures and a latency recorded for every operation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use palaver_loadtest::rest::{self, RestConfig, RestScenario};

#[actix_web::test]
async fn rest_scenarios_run_clean_and_record_every_operation() {
    let server = TestServer::start().await;
    let t = server.tenant("load").await;
    for (scenario, ops) in [
        (
            RestScenario::Sessions,
            vec!["create-session", "end-session"],
        ),
        (RestScenario::ListAssistants, vec!["list-assistants"]),
    ] {
        let report = rest::run(RestConfig {
            base_url: server.base.clone(),
            api_key: t.key.clone(),
            scenario,
            iterations: 40,
            clients: 4,
            max_duration: Duration::from_secs(60),
            assistant_id: None,
        })
        .await
        .unwrap();
        assert_eq!(report.failed(), 0, "{}", report.table());
        for op in ops {
            let summary = &report.operations[op];
            assert_eq!(summary.ok, 40, "{op}: {}", report.table());
            assert!(summary.p50_ms > 0.0 && summary.p50_ms <= summary.max_ms);
        }
    }

    // Failures are counted with their reason, not hidden.
    let report = rest::run(RestConfig {
        base_url: server.base.clone(),
        api_key: "pk_0000000000000000000000000000000000000000".into(),
        scenario: RestScenario::ListAssistants,
        iterations: 3,
        clients: 1,
        max_duration: Duration::from_secs(60),
        assistant_id: Some(1),
    })
    .await
    .unwrap();
    assert_eq!(report.failed(), 3);
    assert!(
        report.table().contains("status 401 unauthorized"),
        "{}",
        report.table()
    );
}
