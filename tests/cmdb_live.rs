//! Live topology and rules: CMDB changes over HTTP and NATS go through the engine and change
//! correlation at once; invalid changes are refused with the reason; rules reload over HTTP
//! keeps the old rules when a file is broken; `cmdb check` and `rules check` name the problem.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn host_alert(host: &str) -> Value {
    json!({"source": "probe", "name": "HostUnreachable", "ci": host, "severity": "critical"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmdb_changes_over_http_and_nats_change_correlation() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    d.wait_ready(&c, 20).await;

    // A new switch with one host, over HTTP.
    let (status, body) = post_json(
        &c,
        &d.url("/api/v1/cmdb/changes"),
        &json!([
            {"op": "upsert_ci", "ci": {"id": "lab-tor", "type": "switch", "owner_group": "lab-net"}},
            {"op": "upsert_ci", "ci": {"id": "lab-h1", "type": "host"}},
            {"op": "add_relation", "relation": {"from": "lab-h1", "type": "connected_to", "to": "lab-tor"}},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, ci) = get_json(&c, &d.url("/api/v1/cmdb/cis/lab-tor")).await;
    assert_eq!(status, 200, "{ci}");
    assert_eq!(ci["owner_group"], "lab-net");
    assert_eq!(ci["relations"].as_array().map(Vec::len), Some(1));

    // A second host, PUT over HTTP, cabled over NATS.
    let r = c
        .put(d.url("/api/v1/cmdb/cis/lab-h2"))
        .json(&json!({"id": "lab-h2", "type": "host"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 200);
    let nc = async_nats::connect(nats.url()).await.expect("connect");
    let mut dead = nc.subscribe("cmdb.deadletter").await.expect("subscribe");
    nc.flush().await.expect("flush");
    let op = json!([{"op": "add_relation", "relation": {"from": "lab-h2", "type": "connected_to", "to": "lab-tor"}}]);
    nc.publish("cmdb.changes", op.to_string().into())
        .await
        .expect("publish");
    // An invalid change (unknown CI) is dead-lettered with the reason and changes nothing.
    let bad = json!([{"op": "add_relation", "relation": {"from": "lab-h2", "type": "connected_to", "to": "nowhere"}}]);
    nc.publish("cmdb.changes", bad.to_string().into())
        .await
        .expect("publish");
    nc.flush().await.expect("flush");
    let msg = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("dead letter")
        .expect("open");
    let reason = msg.headers.expect("headers");
    let reason = reason
        .get("Incidentd-Reject-Reason")
        .expect("reason")
        .as_str()
        .to_string();
    assert!(reason.contains("nowhere"), "{reason}");
    eventually(10, "relation over nats applied", || async {
        let ci = get_json(&c, &d.url("/api/v1/cmdb/cis/lab-h2")).await.1;
        (ci["relations"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    // HTTP refuses an invalid change with the reason.
    let (status, body) = post_json(
        &c,
        &d.url("/api/v1/cmdb/relations"),
        &json!({"from": "lab-h2", "type": "connected_to", "to": "missing"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing")),
        "{body}"
    );

    // Both hosts now share the switch: one incident, root the switch once it alerts.
    for a in [
        host_alert("lab-h1"),
        host_alert("lab-h2"),
        json!({"source": "probe", "name": "SwitchDown", "ci": "lab-tor", "severity": "critical"}),
    ] {
        let (status, body) = post_json(&c, &d.url("/api/v1/alerts"), &a).await;
        assert_eq!(status, 200, "{body}");
    }
    let incidents = incidents(&c, &d).await;
    let open: Vec<&Value> = incidents.iter().filter(|i| i["state"] == "open").collect();
    assert_eq!(open.len(), 1, "{incidents:?}");
    assert_eq!(open[0]["root_cause"]["ci"], "lab-tor");
    assert_eq!(open[0]["owner_group"], "lab-net");
    assert_eq!(open[0]["alert_count"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rules_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    std::fs::copy(repo_path("rules/default.toml"), rules.join("default.toml")).expect("copy");
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--rules")
        .arg(&rules)
        .args(["--nats-url", NOWHERE])
        .stderr(log)
        .spawn()
        .expect("start");
    let child = KillOnDrop(child);
    let c = client();
    let port = eventually(20, "the listening line", || async {
        listening_port(&log_path)
    })
    .await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    eventually(20, "up", || async {
        let r = c.get(url("/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // The served process runs without transparent huge pages (latency spikes, main.rs)...
    if cfg!(target_os = "linux") {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).expect("proc status");
        assert!(status.contains("THP_enabled:\t0"), "{status}");
        // ... and with its open-files soft limit raised to the hard one (connections).
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).expect("limits");
        let files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("open files line");
        let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers[0], numbers[1], "{files}");
    }

    std::fs::write(
        rules.join("zz-broken.toml"),
        "[[rule]]\nname = \"x\"\ngroup_by = [\"nope\"]\nwindow = \"1m\"\n",
    )
    .expect("write");
    let (status, body) = post_json(&c, &url("/api/v1/rules/reload"), &json!({})).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("zz-broken.toml:3:13"), "{error}");
    assert!(error.contains("previous rules stay in force"), "{error}");

    std::fs::write(
        rules.join("zz-broken.toml"),
        "[[rule]]\nname = \"x\"\ngroup_by = [\"name\"]\nwindow = \"1m\"\n",
    )
    .expect("write");
    let (status, body) = post_json(&c, &url("/api/v1/rules/reload"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["rules"].as_u64().is_some_and(|n| n > 1), "{body}");

    // SIGHUP reloads too: break it again and watch the failure counter.
    std::fs::write(rules.join("zz-broken.toml"), "not toml at all [").expect("write");
    Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    eventually(10, "reload failure counted", || async {
        let text = c
            .get(url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("incidentd_rules_reload_failures_total 2")
            .then_some(())
    })
    .await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_commands_name_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmdb = dir.path().join("cmdb.json");
    std::fs::write(
        &cmdb,
        json!({
            "cis": [{"id": "a", "type": "host"}, {"id": "a", "type": "host"}, {"id": "b", "type": "vm"}],
            "relations": [
                {"from": "b", "type": "hosted_on", "to": "ghost"},
                {"from": "a", "type": "depends_on", "to": "b"},
                {"from": "b", "type": "depends_on", "to": "a"},
            ]
        })
        .to_string(),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(["cmdb", "check"])
        .arg(&cmdb)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["duplicate", "ghost", "cycle"] {
        assert!(err.to_lowercase().contains(needle), "{needle}: {err}");
    }
    let ok = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(["cmdb", "check"])
        .arg(repo_path("fixtures/cmdb/csv"))
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("dir");
    std::fs::write(
        rules.join("r.toml"),
        "[[rule]]\nname = \"t\"\ntopology = { relations = [\"wired_to\"] }\nwindow = \"5m\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(["rules", "check"])
        .arg(&rules)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("r.toml:3:27") && err.contains("unknown relation \"wired_to\""),
        "{err}"
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_incidentd"))
        .args(["rules", "check"])
        .arg(repo_path("rules"))
        .output()
        .expect("run");
    assert!(ok.status.success());
}
