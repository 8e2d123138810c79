//! Decoder for Grafana unified-alerting webhooks: the Alertmanager webhook shape (see
//! [`super::alertmanager`]) plus Grafana's own fields. Decoding is the Alertmanager webhook
//! path with three differences:
//! - `source` defaults to `grafana` (a `source` label still wins);
//! - `version` may be "1" (Grafana's own) or "4";
//! - per alert, `dashboardURL`, `panelURL` and `valueString` become the annotations
//!   `dashboard_url`, `panel_url` and `value_string`, beside `generator_url`.
//!
//! Envelope fields (`orgId`, `title`, `state`, `message`) are ignored like `groupKey`, as are
//! `silenceURL` (a Grafana UI link) and `values` (its numbers are also in `valueString`). A
//! top-level array is refused: Grafana never sends one, and the envelope already holds many.

use super::json::Value;

use super::alertmanager::{self, Dialect};
use super::{Decoded, Limits, PayloadError, Stamp, wrong_shape};

const GRAFANA: Dialect = Dialect {
    name: "Grafana",
    a_name: "a Grafana",
    expected: "a Grafana webhook object",
    versions: &["1", "4"],
    versions_text: "\"1\" or \"4\"",
    default_source: "grafana",
    annotations: &[
        ("generatorURL", "generator_url"),
        ("dashboardURL", "dashboard_url"),
        ("panelURL", "panel_url"),
        ("valueString", "value_string"),
    ],
};

pub(super) fn decode_value(
    value: Value<'_>,
    stamp: Stamp,
    limits: &Limits,
) -> Result<Decoded, PayloadError> {
    match value {
        Value::Object(obj) => alertmanager::decode_webhook(obj, &GRAFANA, stamp, limits),
        other => Err(wrong_shape(format!(
            "expected {}, got {}",
            GRAFANA.expected,
            other.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Format, ItemError, decode};
    use super::*;
    use crate::ingest::testing::{now, t};
    use crate::model::{Fingerprint, Severity, Status};

    fn run(body: &str) -> Result<Decoded, PayloadError> {
        decode(
            Format::Grafana,
            body.as_bytes(),
            Stamp::Live(now()),
            &Limits::default(),
        )
    }

    fn reject(body: &str) -> ItemError {
        let d = run(body).unwrap();
        assert!(d.alerts.is_empty(), "unexpectedly decoded: {:?}", d.alerts);
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        d.errors[0].clone()
    }

    /// Shaped like the example in Grafana's "Webhook notifier" documentation.
    const WEBHOOK: &str = r#"{
      "receiver": "incidentd",
      "status": "firing",
      "orgId": 1,
      "alerts": [
        {
          "status": "firing",
          "labels": {"alertname": "High CPU", "grafana_folder": "Infra",
                     "instance": "web-01:9100", "severity": "critical", "ci": "web-01"},
          "annotations": {"summary": "CPU on web-01 above 90% for 5m"},
          "startsAt": "2026-11-23T09:58:00Z",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "https://grafana.example/alerting/grafana/cpu/view?orgId=1",
          "fingerprint": "c6eadffa33fcdf37",
          "silenceURL": "https://grafana.example/alerting/silence/new?matcher=alertname%3DHigh+CPU",
          "dashboardURL": "https://grafana.example/d/node?orgId=1",
          "panelURL": "https://grafana.example/d/node?orgId=1&viewPanel=3",
          "values": {"B": 93.5, "C": 1},
          "valueString": "[ var='B' labels={instance=web-01:9100} value=93.5 ]"
        },
        {
          "status": "resolved",
          "labels": {"alertname": "DiskFull", "source": "grafana-eu", "instance": "db-01"},
          "annotations": {"description": "/var back below 80%"},
          "startsAt": "2026-11-23T08:00:00Z",
          "endsAt": "2026-11-23T10:00:00Z",
          "generatorURL": "",
          "fingerprint": "0a1b2c3d4e5f6071",
          "silenceURL": "",
          "dashboardURL": "",
          "panelURL": "",
          "values": null,
          "valueString": ""
        }
      ],
      "groupLabels": {"alertname": "High CPU"},
      "commonLabels": {},
      "commonAnnotations": {},
      "externalURL": "https://grafana.example/",
      "version": "1",
      "groupKey": "{}:{alertname=\"High CPU\"}",
      "truncatedAlerts": 0,
      "title": "[FIRING:1] High CPU Infra",
      "state": "alerting",
      "message": "**Firing**\n\nValue: B=93.5"
    }"#;

    #[test]
    fn golden_webhook() {
        let d = run(WEBHOOK).unwrap();
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let [cpu, disk] = &d.alerts[..] else {
            panic!("expected two alerts, got {:?}", d.alerts)
        };
        assert_eq!(cpu.source, "grafana");
        assert_eq!(cpu.name, "High CPU");
        assert_eq!(cpu.ci.as_deref(), Some("web-01"));
        assert_eq!(cpu.severity, Severity::Critical);
        assert_eq!(cpu.status, Status::Firing);
        assert_eq!(
            cpu.summary.as_deref(),
            Some("CPU on web-01 above 90% for 5m")
        );
        assert_eq!(cpu.starts_at, t("2026-11-23T09:58:00Z"));
        assert_eq!(cpu.ends_at, None);
        assert_eq!(cpu.received_at, now());
        assert_eq!(cpu.fingerprint, Fingerprint::alertmanager(&cpu.labels));
        let ann: Vec<_> = cpu
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            ann,
            [
                ("dashboard_url", "https://grafana.example/d/node?orgId=1"),
                (
                    "generator_url",
                    "https://grafana.example/alerting/grafana/cpu/view?orgId=1"
                ),
                (
                    "panel_url",
                    "https://grafana.example/d/node?orgId=1&viewPanel=3"
                ),
                ("summary", "CPU on web-01 above 90% for 5m"),
                (
                    "value_string",
                    "[ var='B' labels={instance=web-01:9100} value=93.5 ]"
                ),
            ]
        );

        // A `source` label wins; empty URLs are left out.
        assert_eq!(disk.source, "grafana-eu");
        assert_eq!(disk.status, Status::Resolved);
        assert_eq!(disk.ends_at, Some(t("2026-11-23T10:00:00Z")));
        assert_eq!(disk.summary.as_deref(), Some("/var back below 80%"));
        assert_eq!(disk.annotations.len(), 1);
    }

    #[test]
    fn version_4_accepted_others_refused() {
        let body = WEBHOOK.replace(r#""version": "1""#, r#""version": "4""#);
        assert_eq!(run(&body).unwrap().alerts.len(), 2);

        let body = WEBHOOK.replace(r#""version": "1""#, r#""version": "2""#);
        let e = run(&body).map(|_| ()).unwrap_err();
        assert_eq!(e.code, "invalid_value");
        assert_eq!(
            e.message,
            "unsupported Grafana webhook version \"2\", only \"1\" or \"4\" is supported"
        );
        let e = run("[]").map(|_| ()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "wrong_shape",
                "expected a Grafana webhook object, got array"
            )
        );
    }

    #[test]
    fn reject_bad_dashboard_url() {
        let e = reject(
            r#"{"version":"1","alerts":[{"status":"firing","labels":{"alertname":"A"},
                "dashboardURL":42}]}"#,
        );
        assert_eq!((e.field.as_str(), e.code), ("dashboardURL", "wrong_type"));
        assert_eq!(
            e.message,
            "field `dashboardURL` must be a string, got number"
        );
    }
}
