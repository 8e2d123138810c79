//! The shipped Nagios/Icinga notification command against a real incidentd: a PROBLEM fires,
//! the RECOVERY resolves the same alert, an ACKNOWLEDGEMENT is ignored.

mod common;

use std::process::Command;

use common::*;

fn notify(base: &str, args: &[&str]) -> std::process::ExitStatus {
    Command::new("sh")
        .arg(repo_path("deploy/integrations/notify-incidentd.sh"))
        .args(args)
        .env("INCIDENTD_URL", base)
        .status()
        .expect("run notify-incidentd.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nagios_problem_and_recovery_become_one_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), NOWHERE);
    let c = client();
    assert!(
        notify(
            &d.base,
            &[
                "service",
                "PROBLEM",
                "web-7",
                "HTTP \"/health\"",
                "CRITICAL",
                "HTTP 503 - it's down"
            ]
        )
        .success()
    );
    assert!(
        notify(
            &d.base,
            &[
                "service",
                "ACKNOWLEDGEMENT",
                "web-7",
                "HTTP \"/health\"",
                "CRITICAL",
                "ack"
            ]
        )
        .success()
    );
    let incidents_now = incidents(&c, &d).await;
    assert_eq!(incidents_now.len(), 1);
    let alert = &incidents_now[0]["alerts"][0];
    assert_eq!(alert["name"], "HTTP \"/health\"");
    assert_eq!(alert["ci"], "web-7");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["summary"], "HTTP 503 - it's down");
    assert_eq!(alert["count"], 1, "the acknowledgement was not sent");
    assert!(
        notify(
            &d.base,
            &[
                "service",
                "RECOVERY",
                "web-7",
                "HTTP \"/health\"",
                "OK",
                "HTTP 200"
            ]
        )
        .success()
    );
    let after = incidents(&c, &d).await;
    assert_eq!(after[0]["alerts"][0]["status"], "resolved");
    assert!(
        notify(
            &d.base,
            &["host", "PROBLEM", "db-2", "DOWN", "PING CRITICAL"]
        )
        .success()
    );
    assert_eq!(incidents(&c, &d).await.len(), 2);
}
