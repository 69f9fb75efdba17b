//! The real XDP program under BPF_PROG_TEST_RUN, shared by the fixture table and the
//! differential test: load it once on a private bpffs, apply policies given as TOML text, run a
//! frame (repeat = 1) and report its verdict and every counter it moved.
// Each test binary compiles this module and uses a different part of it.
#![allow(
    dead_code,
    reason = "each test binary that includes it uses a different part"
)]

use std::{collections::BTreeMap, fmt, path::Path};

use aya::programs::{TestRun as _, TestRunOptions};
use edgeblock::{
    apply::apply,
    compile::{Compiled, compile},
    loader::Filter,
    maps::decode_name,
    pins::Pins,
    policy,
};
use edgeblock_tests::{Bpffs, require_root};
use filter_common::NoticeTarget;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Parses policy text; includes are not available to these tests.
pub fn parse_policy(text: &str, name: &str) -> policy::Policy {
    let now = "2026-06-01T00:00:00Z".parse().expect("test timestamp");
    policy::parse(text, Path::new(name), now, |p| {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("these tests have no include {}", p.display()),
        ))
    })
    .unwrap_or_else(|e| panic!("the test policy must be valid:\n{e}\n--- policy:\n{text}"))
}

/// What a frame did: the verdict and every counter that moved.
#[derive(Debug, PartialEq, Eq)]
pub struct Effect {
    pub verdict: u32,
    /// Counter name ("rule NAME", "drop", "no_match", ...) -> (packets, bytes) it moved by.
    pub moved: BTreeMap<String, (u64, u64)>,
}

impl Effect {
    /// `verdict`, with each named counter moved by one `len`-byte frame.
    pub fn new(verdict: u32, counters: &[&str], len: usize) -> Self {
        let moved = counters
            .iter()
            .map(|c| ((*c).to_owned(), (1, len as u64)))
            .collect();
        Self { verdict, moved }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            XDP_ABORTED => "XDP_ABORTED",
            XDP_DROP => "XDP_DROP",
            XDP_PASS => "XDP_PASS",
            XDP_TX => "XDP_TX",
            XDP_REDIRECT => "XDP_REDIRECT",
            _ => "XDP_?",
        };
        write!(f, "{verdict} ({}); counters moved:", self.verdict)?;
        if self.moved.is_empty() {
            f.write_str(" none")?;
        }
        for (name, (packets, bytes)) in &self.moved {
            write!(f, " [{name} +{packets}/{bytes}B]")?;
        }
        Ok(())
    }
}

pub struct Harness {
    pub filter: Filter,
    /// Rule ids in use after the last apply, with their names.
    rules: Vec<(u32, String)>,
    // Last: unmounting the bpffs releases the pinned program and maps.
    _bpffs: Bpffs,
}

impl Harness {
    pub fn new() -> Self {
        require_root();
        let bpffs = Bpffs::new();
        let filter = Filter::load_or_open(&Pins::new(bpffs.pin_root()))
            .unwrap_or_else(|e| panic!("cannot load the XDP program and its maps: {e}"));
        Self {
            filter,
            rules: Vec::new(),
            _bpffs: bpffs,
        }
    }

    pub fn apply(&mut self, text: &str) -> Compiled {
        self.apply_with_targets(text, &[])
    }

    /// Apply with notice targets already resolved (`targets[i]` for `compiled.notices[i]`).
    pub fn apply_with_targets(&mut self, text: &str, targets: &[NoticeTarget]) -> Compiled {
        let compiled = compile(&parse_policy(text, "test.toml"));
        apply(&mut self.filter.maps, &compiled, targets, 1)
            .unwrap_or_else(|e| panic!("cannot apply the policy: {e}\n--- policy:\n{text}"));
        self.rules = self
            .filter
            .maps
            .rule_metas()
            .unwrap_or_else(|e| panic!("cannot read the rule table: {e}"))
            .into_iter()
            .map(|(id, meta)| (id, decode_name(&meta.name)))
            .collect();
        compiled
    }

    pub fn counters(&self) -> BTreeMap<String, (u64, u64)> {
        let maps = &self.filter.maps;
        let g = maps
            .global_stats()
            .unwrap_or_else(|e| panic!("cannot read the global counters: {e}"));
        let mut out: BTreeMap<String, (u64, u64)> = [
            ("pass", g.pass),
            ("drop", g.drop),
            ("redirect", g.redirect),
            ("reject", g.reject),
            ("no_match", g.no_match),
            ("non_ip", g.non_ip),
            ("malformed", g.malformed),
            ("malformed_dropped", g.malformed_dropped),
            ("reject_unanswered", g.reject_unanswered),
            ("redirect_failed", g.redirect_failed),
            ("shadow pass", g.shadow_pass),
            ("shadow drop", g.shadow_drop),
            ("shadow redirect", g.shadow_redirect),
            ("shadow reject", g.shadow_reject),
        ]
        .into_iter()
        .map(|(name, c)| (name.to_owned(), (c.packets, c.bytes)))
        .collect();
        for (id, name) in &self.rules {
            let c = maps
                .rule_counter(*id)
                .unwrap_or_else(|e| panic!("cannot read the counter of rule {name}: {e}"));
            out.insert(format!("rule {name}"), (c.packets, c.bytes));
        }
        out
    }

    /// The program's verdict for one frame.
    pub fn verdict(&self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        self.filter
            .program()
            .test_run(opts)
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN failed for a {}-byte frame: {e}",
                    frame.len()
                )
            })
            .return_value
    }

    /// The verdict and the frame as the program left it.
    pub fn run_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_split(frame, None)
    }

    /// `run_out`, with the frame's first `first` bytes in its linear part and the rest in
    /// more buffers (a multi-buffer frame), when given; by default the kernel fills a first
    /// buffer of about a page.
    pub fn run_split(&self, frame: &[u8], first: Option<u32>) -> (u32, Vec<u8>) {
        // Room for the frame and anything a rewrite adds to it (a too small buffer fails the
        // run with ENOSPC).
        let mut out = vec![0u8; frame.len() + 4096];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; data_end is the linear part's length.
        let ctx: Vec<u8> = [0, first.unwrap_or(0), 0, 0, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: first.is_some().then_some(ctx.as_slice()),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let r = self.filter.program().test_run(opts).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN failed for a {}-byte frame: {e}",
                frame.len()
            )
        });
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// The verdict and the counters one frame moved.
    pub fn run(&self, frame: &[u8]) -> Effect {
        self.run_with_output(frame).0
    }

    /// The verdict, the counters one frame moved, and the frame as the program left it.
    pub fn run_with_output(&self, frame: &[u8]) -> (Effect, Vec<u8>) {
        self.run_split_with_output(frame, None)
    }

    /// `run_with_output` for a frame split as `run_split` does.
    pub fn run_split_with_output(&self, frame: &[u8], first: Option<u32>) -> (Effect, Vec<u8>) {
        let before = self.counters();
        let (verdict, out) = self.run_split(frame, first);
        let moved = self
            .counters()
            .into_iter()
            .filter_map(|(name, (p1, b1))| {
                let (p0, b0) = before.get(&name).copied().unwrap_or_default();
                ((p1, b1) != (p0, b0)).then(|| (name, (p1.wrapping_sub(p0), b1.wrapping_sub(b0))))
            })
            .collect();
        (Effect { verdict, moved }, out)
    }
}
