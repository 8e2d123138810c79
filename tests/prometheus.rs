//! The real Prometheus (Debian `prometheus`, installed by `.ci/run`) with an alerting rule that
//! fires at once and its `alertmanagers` pointed at incidentd: the incident appears, with
//! Prometheus's labels and Alertmanager's fingerprint.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sends_its_firing_alerts_to_incidentd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), NOWHERE);
    let target = d.base.trim_start_matches("http://").to_string();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: test\n  interval: 1s\n  rules:\n  - alert: PrometheusSaysHello\n    expr: vector(1)\n    labels:\n      severity: critical\n      service: payments\n    annotations:\n      summary: hello from prometheus\n",
    )
    .expect("rules");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nalerting:\n  alertmanagers:\n  - api_version: v2\n    static_configs:\n    - targets: [\"{target}\"]\n",
            dir.path().join("rules.yml").display()
        ),
    )
    .expect("config");
    let port = free_port();
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--rules.alert.resend-delay=1s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus must be installed (.ci/run installs it)");
    let _prometheus = Prometheus(prometheus);
    let c = client();
    let incident = eventually(60, "prometheus's alert as an incident", || async {
        incidents(&c, &d)
            .await
            .into_iter()
            .find(|i| i["alerts"][0]["name"] == "PrometheusSaysHello")
    })
    .await;
    let alert = &incident["alerts"][0];
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["labels"]["service"], "payments");
    assert_eq!(alert["summary"], "hello from prometheus");
    assert_eq!(
        incident["rule"], "same-service",
        "grouped by the service label"
    );
    // Prometheus re-sends every evaluation; the alert stays one alert whose count grows.
    eventually(30, "re-sends counted as repeats", || async {
        let all = incidents(&c, &d).await;
        let i = all
            .iter()
            .find(|i| i["alerts"][0]["name"] == "PrometheusSaysHello")?;
        (i["alerts"].as_array()?.len() == 1 && i["alerts"][0]["count"].as_u64()? >= 2).then_some(())
    })
    .await;
}
