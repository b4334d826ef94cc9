//! `secretbox`: trades the one-time token in its environment for a secret (see docs/protocol.md).

fn main() {
    eprintln!("secretbox: error: not implemented yet (the secret broker is the next milestone)");
    std::process::exit(1);
}
