//! Entry point: parse configuration, start telemetry, run the subcommand, map errors to exit codes
//! (0 success, 2 usage/configuration, 1 anything else), each as one line on stderr.

use std::{io::Write, process::ExitCode};

use ls_token_refresher::{app, check, config, telemetry};

fn main() -> ExitCode {
    let cli = match config::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", config::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli.opts.validate(cli.command) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(cli.opts.log_format, cli.opts.log_level);
    // One TLS provider for reqwest and kube (ring); must be installed before any client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // A sidecar should not start one worker per node core: everything here is I/O.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            config::Command::Run => app::run(cli.opts).await,
            config::Command::Once => app::once(cli.opts, cli.command).await.map(|_| ()),
            config::Command::Token => {
                let set = app::once(cli.opts, cli.command).await?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", set.auth.token.expose()).map_err(app::AppError::failure)
            }
            config::Command::Check => {
                let report = check::run(cli.opts).await?;
                print!("{}", report.text());
                if report.failed() == 0 {
                    println!("all checks passed");
                    Ok(())
                } else {
                    Err(app::AppError::failure(format!(
                        "{} check(s) failed",
                        report.failed()
                    )))
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message.lines().next().unwrap_or("failed"));
            ExitCode::from(e.code)
        }
    }
}
