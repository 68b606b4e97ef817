//! The `sparsefs` binary: parse, set up logging, run a subcommand; errors become one
//! line on stderr and an exit status (2 bad input, 1 runtime failure).
#![forbid(unsafe_code)]

use clap::Parser;
use sparsefs::cli::{self, Cli, Cmd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::normalize_args(std::env::args_os().collect());
    let parsed = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("sparsefs: error: {first} (see sparsefs --help)");
            return ExitCode::from(2);
        }
    };
    match parsed.cmd {
        Cmd::Mount(a) => {
            let cfg = match cli::validate(&a) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sparsefs: error: {e}");
                    return ExitCode::from(2);
                }
            };
            sparsefs::daemon::init_logging(cfg.verbose);
            ExitCode::from(sparsefs::daemon::run(cfg) as u8)
        }
        Cmd::Umount {
            mountpoint,
            lazy,
            force,
            wait,
        } => {
            if force {
                let wait = std::time::Duration::from_secs_f64(wait.max(0.0));
                report(
                    sparsefs::daemon::umount_force(&mountpoint, wait).map(|msg| println!("{msg}")),
                )
            } else {
                report(sparsefs::daemon::umount(&mountpoint, lazy))
            }
        }
        Cmd::Stats {
            mountpoint,
            prometheus: true,
            ..
        } => report(sparsefs::daemon::stats_prometheus(&mountpoint)),
        Cmd::Stats {
            mountpoint,
            json,
            watch,
            ..
        } => report(sparsefs::daemon::stats(&mountpoint, json, watch)),
        Cmd::Gc {
            root,
            dry_run,
            min_age,
        } => {
            let min_age = match min_age.as_deref() {
                None => std::time::Duration::from_secs(60),
                Some("0") => std::time::Duration::ZERO,
                Some(a) => match sparsefs::cli::parse_duration("min age", a) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("sparsefs: error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            report(sparsefs::tools::gc(&root, dry_run, min_age))
        }
        Cmd::Map {
            files,
            json,
            records,
        } => {
            let fmt = if json {
                sparsefs::tools::MapFormat::Json
            } else if records {
                sparsefs::tools::MapFormat::Records
            } else {
                sparsefs::tools::MapFormat::Table
            };
            report(sparsefs::tools::map(&files, fmt))
        }
        Cmd::Scan {
            paths,
            root,
            block,
            dig,
            dry_run,
        } => {
            let block = match scan_block(&block) {
                Ok(b) => b,
                Err(code) => return code,
            };
            let root = root.or_else(|| paths.first().filter(|p| p.is_dir()).cloned());
            report(sparsefs::tools::scan(
                &paths,
                &sparsefs::tools::ScanOpts {
                    root,
                    block,
                    dig,
                    dry_run,
                },
            ))
        }
        Cmd::Send {
            files,
            format,
            block,
            to,
            ssh,
            remote_sparsefs,
            update,
            inplace,
            json,
        } => {
            let block = match scan_block(&block) {
                Ok(b) => b,
                Err(code) => return code,
            };
            let format = if format == "xfer-hole" {
                sparsefs::send::Format::XferHole
            } else {
                sparsefs::send::Format::Native
            };
            report_send(sparsefs::send::send(
                &files,
                &sparsefs::send::SendOpts {
                    format,
                    block,
                    to,
                    ssh,
                    remote_bin: remote_sparsefs,
                    update,
                    inplace,
                    json,
                },
            ))
        }
        Cmd::Recv {
            dest,
            inplace,
            json,
        } => report_send(sparsefs::send::recv_cmd(
            &dest,
            &sparsefs::send::recv::RecvOpts { inplace },
            json,
        )),
        Cmd::Man => {
            use clap::CommandFactory;
            let man = clap_mangen::Man::new(Cli::command()).section("8");
            report(
                man.render(&mut std::io::stdout())
                    .map_err(|e| e.to_string()),
            )
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sparsefs",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Demo { sparse_block } => {
            sparsefs::daemon::init_logging(0);
            report(sparsefs::demo::run(&sparse_block))
        }
    }
}

/// send and recv: bad input exits 2 (nothing written), a failure on the way 1.
fn report_send(r: Result<(), sparsefs::send::Failure>) -> ExitCode {
    use sparsefs::send::Failure;
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("sparsefs: error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("sparsefs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sparsefs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `--block` of scan and send: a power of two from 512 to 64M; else one error line and
/// exit status 2.
fn scan_block(arg: &str) -> Result<u64, ExitCode> {
    match cli::parse_size("block", arg) {
        Ok(b) if b.is_power_of_two() && (512..=64 << 20).contains(&b) => Ok(b),
        Ok(b) => {
            eprintln!("sparsefs: error: invalid block {b}: must be a power of two from 512 to 64M");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("sparsefs: error: {e}");
            Err(ExitCode::from(2))
        }
    }
}
