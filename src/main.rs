//! Entry point: parse the command line, start telemetry, run the command. Exit codes: 0 success,
//! 2 usage/configuration (one line naming the flag and its environment variable), 1 anything else.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ls_token_refresher::{cli, cmd, telemetry};

fn main() -> ExitCode {
    let cli = match cli::parse_args(std::env::args_os()) {
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
            eprintln!("{}", cli::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    telemetry::init(&cli.log);
    cmd::main(cli.command)
}
