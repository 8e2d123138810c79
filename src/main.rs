//! The `incidentd` command: a thin shell over the library (see `lib.rs` for the module map).

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use incidentd::cmdb::CmdbSpec;
use incidentd::config::{Config, Overrides};
use incidentd::rules::Rules;

/// mimalloc rather than glibc malloc: the hot path allocates many small blocks on one thread
/// and frees them on another (decoder → engine → writer), where glibc's arenas cost measurably
/// more CPU per alert (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "incidentd",
    version,
    about = "Turns alert storms into incidents."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: NATS and HTTP ingest, correlation, event log, HTTP API.
    Serve {
        /// TOML configuration file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// HTTP listen address [default: 127.0.0.1:9080].
        #[arg(long)]
        listen: Option<String>,
        /// NATS server URL [default: nats://127.0.0.1:4222].
        #[arg(long)]
        nats_url: Option<String>,
        /// Directory of the event log [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Directory of rule files [default: ./rules, else the built-in rules].
        #[arg(long)]
        rules: Option<PathBuf>,
        /// CMDB: a JSON file, or a directory with cis.csv and relations.csv
        /// [default: fixtures/cmdb/example.json if present, else empty].
        #[arg(long)]
        cmdb: Option<PathBuf>,
    },
    /// Run the engine offline over recorded alerts and write the incidents it would open.
    Replay {
        /// Directory of rule files [default: ./rules, else the built-in rules].
        #[arg(long)]
        rules: Option<PathBuf>,
        /// CMDB: a JSON file, or a directory with cis.csv and relations.csv
        /// [default: fixtures/cmdb/example.json if present, else empty].
        #[arg(long)]
        cmdb: Option<PathBuf>,
        /// Recorded alerts: one native alert JSON per line, in arrival order.
        #[arg(long)]
        alerts: PathBuf,
        /// Where to write one incident JSON per line.
        #[arg(long)]
        out: PathBuf,
        /// Ground truth (incidents with their dedup keys and root CI): adds pairwise
        /// precision/recall/F1, root-cause accuracy and suppression to the summary.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Write the summary (and quality) as JSON for scripts.
        #[arg(long)]
        report_json: Option<PathBuf>,
        /// Instead of the rules, run a simple baseline: by-name, by-ci or alertmanager.
        #[arg(long, conflicts_with = "rules")]
        baseline: Option<String>,
    },
    /// Replay the same history with current and proposed rules (or CMDB) and list the
    /// incidents that split, merged, or changed root cause or priority.
    Diff {
        /// Recorded alerts (replay input).
        #[arg(long)]
        alerts: PathBuf,
        /// Current rules [default: ./rules, else the built-in rules].
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Proposed rules [default: the current rules].
        #[arg(long)]
        new_rules: Option<PathBuf>,
        /// Current CMDB [default: fixtures/cmdb/example.json if present, else empty].
        #[arg(long)]
        cmdb: Option<PathBuf>,
        /// Proposed CMDB [default: the current CMDB].
        #[arg(long)]
        new_cmdb: Option<PathBuf>,
        /// Also write the changes as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Turn the alerts recorded in an event log back into replay input.
    ExportAlerts {
        /// The service's data directory (holds `log/`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Output file [default: stdout].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Publish one alert payload (a JSON object or array, from FILE or stdin) over NATS.
    Publish {
        /// NATS server URL.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Subject; its second token names the format (native, alertmanager).
        #[arg(long, default_value = "alerts.native.cli")]
        subject: String,
        /// File with the payload; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Validate rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Validate a CMDB.
    Cmdb {
        #[command(subcommand)]
        command: CmdbCommand,
    },
}

#[derive(Subcommand)]
enum CmdbCommand {
    /// Check a CMDB (JSON file, or directory with cis.csv and relations.csv): duplicate ids,
    /// unknown relation endpoints, forbidden cycles. Lists every problem; non-zero exit if any.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check every rule file in DIR; exit non-zero with file:line and reason on the first error.
    Check { dir: PathBuf },
}

/// Turns transparent huge pages off for this process. mimalloc asks for them, and the
/// kernel then zeroes 2 MB at each first touch: while the state grows, the engine thread
/// stalled 13–60 ms at a time in those faults (perf: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`), setting p99 at 50k alerts/s to 61–99 ms. With 4 KB pages
/// p99 there is 4.3–4.4 ms at the same CPU per alert, and RSS is 20 % lower.
#[cfg(target_os = "linux")]
fn no_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn no_huge_pages() -> std::io::Result<()> {
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does: the usual
/// soft limit of 1024 would refuse connections (and log segments) long before
/// `http.max_connections` (4096 by default) answers 503. Returns the limit now in force.
#[cfg(unix)]
fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

fn main() -> ExitCode {
    let huge_pages = no_huge_pages();
    let open_files = raise_open_files_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = huge_pages {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off; expect latency spikes while memory grows");
    }
    match open_files {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("incidentd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            nats_url,
            data_dir,
            rules,
            cmdb,
        } => {
            let overrides = Overrides {
                listen,
                nats_url,
                data_dir,
                rules,
                cmdb,
            };
            let cfg = Config::load(config.as_deref(), overrides)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(incidentd::app::serve(cfg))
        }
        Command::Replay {
            rules,
            cmdb,
            alerts,
            out,
            truth,
            report_json,
            baseline,
        } => {
            let rules = match baseline {
                Some(name) => incidentd::backtest::baseline(&name)?,
                None => incidentd::app::load_rules(rules.as_deref())?.0,
            };
            let (cmdb, _) = incidentd::app::load_cmdb(cmdb.as_deref())?;
            let truth = truth
                .map(|t| incidentd::backtest::Truth::load(&t))
                .transpose()?;
            let input =
                File::open(&alerts).with_context(|| format!("opening {}", alerts.display()))?;
            let output =
                File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let replayed = incidentd::replay::run(
                rules,
                &cmdb,
                BufReader::new(input),
                BufWriter::new(output),
                std::io::stderr().is_terminal(),
            )?;
            println!("{}", replayed.summary);
            let quality = truth.map(|t| {
                incidentd::backtest::score(&t, &replayed.view, &replayed.view.suppressed_keys())
            });
            if let Some(q) = &quality {
                println!("{q}");
            }
            if let Some(path) = report_json {
                let report = serde_json::json!({"summary": replayed.summary, "quality": quality});
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Diff {
            alerts,
            rules,
            new_rules,
            cmdb,
            new_cmdb,
            json,
        } => {
            let (current, _) = incidentd::app::load_rules(rules.as_deref())?;
            let proposed = match new_rules {
                Some(dir) => Rules::load_dir(&dir)?,
                None => current.clone(),
            };
            let (cmdb, _) = incidentd::app::load_cmdb(cmdb.as_deref())?;
            let proposed_cmdb = match new_cmdb {
                Some(path) => incidentd::app::load_cmdb(Some(&path))?.0,
                None => cmdb.clone(),
            };
            let replay = |rules, cmdb: &CmdbSpec| -> anyhow::Result<_> {
                let input =
                    File::open(&alerts).with_context(|| format!("opening {}", alerts.display()))?;
                Ok(incidentd::replay::run(
                    rules,
                    cmdb,
                    BufReader::new(input),
                    std::io::sink(),
                    false,
                )?)
            };
            let before = replay(current, &cmdb)?;
            let after = replay(proposed, &proposed_cmdb)?;
            let changes = incidentd::backtest::diff(&before.view, &after.view);
            println!(
                "incidents: {} -> {}; compression {:.3} -> {:.3}",
                before.summary.incidents,
                after.summary.incidents,
                before.summary.compression,
                after.summary.compression
            );
            print!("{}", incidentd::backtest::describe(&changes));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&changes)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::ExportAlerts { data_dir, out } => {
            let done = match out {
                Some(path) => {
                    let file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    incidentd::export::export(&data_dir, BufWriter::new(file))?
                }
                None => incidentd::export::export(&data_dir, BufWriter::new(std::io::stdout()))?,
            };
            eprintln!(
                "exported {} lines and {} CMDB changes from {} facts",
                done.lines, done.cmdb_changes, done.facts
            );
            Ok(())
        }
        Command::Publish {
            nats_url,
            subject,
            file,
        } => {
            let payload = match file.filter(|f| f.as_os_str() != "-") {
                Some(f) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    buf
                }
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let client = async_nats::connect(&nats_url)
                        .await
                        .with_context(|| format!("connecting to {nats_url}"))?;
                    client.publish(subject.clone(), payload.into()).await?;
                    client.flush().await?;
                    println!("published to {subject}");
                    anyhow::Ok(())
                })
        }
        Command::Cmdb {
            command: CmdbCommand::Check { file },
        } => {
            let spec = CmdbSpec::load(&file)?;
            let problems = spec.check();
            for p in &problems {
                eprintln!("{}: {}: {}", file.display(), p.location, p.message);
            }
            if !problems.is_empty() {
                anyhow::bail!("{} problem(s) in {}", problems.len(), file.display());
            }
            println!(
                "{}: {} CIs, {} relations ok",
                file.display(),
                spec.cis.len(),
                spec.relations.len()
            );
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Check { dir },
        } => {
            let rules = Rules::load_dir(&dir)?;
            println!(
                "{}: {} rules ok (hash {})",
                dir.display(),
                rules.rules.len(),
                rules.hash
            );
            Ok(())
        }
    }
}
