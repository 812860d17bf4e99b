//! Print the recorded trace of a scenario: `cargo run -p chainfold-sim
//! --example trace_dump -- NAME [safe|unsafe-in-place]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let strategy: sim::MergeStrategy = args
        .get(2)
        .map(|s| s.parse().expect("strategy"))
        .unwrap_or(sim::MergeStrategy::Safe);
    let s = sim::find_scenario_for(&args[1], strategy).expect("scenario");
    let p = sim::prepare(s.as_ref());
    if let Some(e) = &p.error {
        println!("error: {e}");
    }
    if let Some(m) = &p.model {
        for (i, op) in m.trace().iter().enumerate() {
            println!("{i}: {op}");
        }
    }
}
