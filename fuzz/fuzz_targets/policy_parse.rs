//! A policy file and the lists it includes, both hostile: `edgeblock::policy::parse` must
//! answer every input with a policy that keeps the documented promises (no host bits, no
//! prefix in two rules of one direction, valid names, ...) or with errors, never a panic.
//!
//! Input: policy text, NUL, the text every `include` reads (see `src/lib.rs`).
#![no_main]

use std::path::Path;

use edgeblock::policy;
use edgeblock_fuzz::{POLICY_PATH, check_errors, check_policy, now, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [text, include] = split::<2>(data);
    let text = String::from_utf8_lossy(text);
    let include = String::from_utf8_lossy(include);
    match policy::parse(&text, Path::new(POLICY_PATH), now(), |_| {
        Ok(include.clone().into_owned())
    }) {
        Ok(policy) => check_policy(&policy),
        Err(errors) => check_errors(&errors),
    }
});
