use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`| head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // Each cause once: an error that already says its cause (as a
            // step's does) is not followed by it again.
            let error: &(dyn std::error::Error + 'static) = &*e;
            eprintln!("error: {}", cci_scaler::error_chain(error));
            // A stack file that does not read or check is bad usage, as a
            // bad flag is (clap exits 2 for those).
            if e.chain().any(|c| {
                c.downcast_ref::<cci_scaler::config::ConfigError>()
                    .is_some_and(|c| !matches!(c, cci_scaler::config::ConfigError::Read { .. }))
                    || c.downcast_ref::<cli::UsageError>().is_some()
            }) {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    // Without -v only our own warnings reach the terminal: the SDK's
    // diagnostics (for example the IMDS region lookup off EC2, with a dump of
    // the HTTP response) are behind -v; our error line says what went wrong.
    let default = match verbose {
        0 => "cci_scaler=warn",
        1 => "cci_scaler=debug,warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
