//! Child process for the lane self-test: `exit N`, `sleep` (prints "ready",
//! then sleeps inside a tokio multi-thread runtime until killed), `env NAME`.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("exit") => std::process::exit(args[1].parse().unwrap()),
        Some("env") => println!("{}", std::env::var(&args[1]).unwrap_or_default()),
        Some("sleep") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                println!("ready");
                std::io::stdout().flush().unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            });
        }
        _ => {
            eprintln!("usage: lane-child exit N | sleep | env NAME");
            std::process::exit(2);
        }
    }
}
