//! Prints the fidelity table (published figures against the cost model's predictions) as
//! markdown, for docs/fidelity.md.

fn main() {
    let reg = costmodel::Registry::builtin();
    match costmodel::fidelity::rows(&reg) {
        Ok(rows) => print!("{}", costmodel::fidelity::markdown(&rows)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
