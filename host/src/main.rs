use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = paynode::cli::Cli::parse();
    match paynode::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
