fn main() {
    eprintln!("whatisup-bench: see BENCHMARKS.md");
}
