//! The NOC console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core from `tests/browser/console.test.mjs`, against a real incidentd and
//! nats-server. It loads the console, posts a ToR-switch alert storm through the API, sees the
//! incident appear without a reload, opens it, sees the root cause and the topology picture,
//! acknowledges it, sees the state change live, and saves `docs/console.png` (the README's
//! screenshot).
//!
//! Needs `node`, `npm` and `chromium` (`.ci/run` installs them). Without them the test fails
//! under CI (`CI` set) and is skipped with the reason otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn on_path(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails under CI, skips (returning `None`) elsewhere.
fn require<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    let message = format!(
        "{what} is missing: the console browser test needs it (.ci/run installs it: \
         apt-get install chromium nodejs npm)"
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("SKIPPED console browser test: {message}");
    None
}

/// Runs `cmd` to completion within `secs`, returning (success, combined output).
fn run(cmd: &mut Command, secs: u64) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "{}{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        if status.is_none() {
            format!("\n(killed after {secs}s)")
        } else {
            String::new()
        }
    );
    (status.is_some_and(|s| s.success()), output)
}

fn install_playwright(dir: &Path, npm: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return;
    }
    // From the committed lock file only: the exact playwright-core version, nothing else.
    let (ok, output) = run(
        Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(dir),
        300,
    );
    assert!(ok, "npm ci in {} failed:\n{output}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_follows_a_storm_live_in_the_console() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| on_path("chromium"));
    let Some(chromium) = require(chromium, "chromium") else {
        return;
    };
    let Some(node) = require(on_path("node"), "node (nodejs)") else {
        return;
    };
    let Some(npm) = require(on_path("npm"), "npm") else {
        return;
    };
    let browser_dir = repo_path("tests/browser");
    install_playwright(&browser_dir, &npm);

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Incidentd::start(&dir.path().join("data"), &nats.url());
    let c = client();
    eventually(20, "incidentd ready", || async {
        let (status, _) = get_json(&c, &d.url("/readyz")).await;
        (status == 200).then_some(())
    })
    .await;

    let base = d.base.clone();
    let (ok, output) = tokio::task::spawn_blocking(move || {
        run(
            Command::new(node)
                .arg("console.test.mjs")
                .arg(&base)
                .env("CHROMIUM", &chromium)
                .env("REPO", repo_path(""))
                .current_dir(repo_path("tests/browser")),
            180,
        )
    })
    .await
    .expect("browser test thread");
    println!("{output}");
    assert!(ok, "the browser test failed:\n{output}");
    assert!(output.contains("[console.test] ok"), "{output}");

    let shot = std::fs::metadata(repo_path("docs/console.png")).expect("docs/console.png");
    assert!(shot.len() > 10_000, "a real screenshot, not an empty file");
    // What the browser did is in the log: the acknowledgement carries the actor.
    let (_, incidents) = get_json(
        &c,
        &d.url("/api/v1/incidents?view=summary&state=all&q=dc1-tor-05"),
    )
    .await;
    let inc = incidents["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["root_cause"]["ci"] == "dc1-tor-05"))
        .cloned()
        .expect("the storm's incident");
    assert_eq!(inc["state"], "acknowledged");
    assert_eq!(inc["acknowledged_by"], "browser-test");
}
