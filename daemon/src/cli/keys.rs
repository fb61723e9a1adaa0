//! `weft keygen FILE` and `weft pubkey [FILE]`: node keys for link security.

use clap::Args;
use std::io::Read;
use std::path::PathBuf;
use weft_secure::SecretKey;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the new secret key (created with mode 0600).
    file: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct PubkeyArgs {
    /// A secret key file (default: read the key from standard input).
    file: Option<PathBuf>,
}

/// Writes a fresh secret key and prints its public key (for neighbours' `public_key` and the
/// admitted list).
pub fn keygen(a: KeygenArgs) -> Result<i32, String> {
    let key = SecretKey::generate();
    weft_secure::write_key_file(&a.file, &key, a.force).map_err(|e| e.to_string())?;
    println!("{}", key.public());
    Ok(0)
}

pub fn pubkey(a: PubkeyArgs) -> Result<i32, String> {
    let key = match &a.file {
        Some(path) => weft_secure::read_key_file(path).map_err(|e| e.to_string())?,
        None => {
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("standard input: {e}"))?;
            SecretKey::parse(&text).map_err(|e| format!("standard input: {e}"))?
        }
    };
    println!("{}", key.public());
    Ok(0)
}
