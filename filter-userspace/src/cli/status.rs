use edgeblock::{
    compile::hash_hex,
    loader::{link_is_live, link_program_id},
};
use serde::Serialize;

use super::Global;

/// Interfaces, attach mode, program id, applied policy, entry counts and map memory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Status {
    pin_root: String,
    program_id: u32,
    interfaces: Vec<Iface>,
    policy: Policy,
    entries: Entries,
    rules: usize,
    map_memory_bytes: u64,
    maps: Vec<MapMem>,
}

#[derive(Serialize)]
struct Iface {
    name: String,
    mode: &'static str,
    /// False when the pin exists but the kernel no longer runs the link (interface gone), or
    /// the link runs another program than the pinned one.
    healthy: bool,
    /// Set when the link filters with another program than the pinned one (the program pin
    /// was removed and a new program loaded): `attach` switches it.
    running_program_id: Option<u32>,
}

#[derive(Serialize)]
struct Policy {
    generation: u64,
    hash: String,
    applied: Option<String>,
    malformed: &'static str,
}

#[derive(Serialize)]
struct Entries {
    dst_v4: usize,
    src_v4: usize,
    dst_v6: usize,
    src_v6: usize,
}

#[derive(Serialize)]
struct MapMem {
    name: &'static str,
    bytes: u64,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let filter = g.open("status")?;
    let program_id = filter.program_id()?;
    let interfaces = filter
        .links()?
        .into_iter()
        .map(|l| {
            let live = link_is_live(&l);
            let running = link_program_id(&l.path);
            Iface {
                healthy: live && running == Some(program_id),
                running_program_id: running.filter(|id| live && *id != program_id),
                name: l.iface,
                mode: l.mode.as_str(),
            }
        })
        .collect();
    let config = filter.maps.config()?;
    let m = &filter.maps;
    let maps: Vec<MapMem> = m
        .memory()?
        .into_iter()
        .map(|(name, bytes)| MapMem { name, bytes })
        .collect();
    let status = Status {
        pin_root: g.pin_root.display().to_string(),
        program_id,
        interfaces,
        policy: Policy {
            generation: config.generation,
            hash: if config.generation == 0 {
                "-".into()
            } else {
                hash_hex(&config.policy_hash)
            },
            applied: (config.generation > 0)
                .then(|| jiff::Timestamp::from_second(config.applied_unix as i64).ok())
                .flatten()
                .map(|t| t.to_string()),
            malformed: if config.malformed_action == filter_common::malformed::PASS {
                "pass"
            } else {
                "drop"
            },
        },
        entries: Entries {
            dst_v4: m.record_len(&m.v4, filter_common::direction::DST)?,
            src_v4: m.record_len(&m.v4, filter_common::direction::SRC)?,
            dst_v6: m.record_len(&m.v6, filter_common::direction::DST)?,
            src_v6: m.record_len(&m.v6, filter_common::direction::SRC)?,
        },
        rules: m.rule_metas()?.len(),
        map_memory_bytes: maps.iter().map(|m| m.bytes).sum(),
        maps,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("pin root:   {}", status.pin_root);
    println!("program:    id {}", status.program_id);
    if status.interfaces.is_empty() {
        println!("interfaces: none (not filtering)");
    }
    for i in &status.interfaces {
        let health = match (i.healthy, i.running_program_id) {
            (true, _) => String::new(),
            (false, Some(other)) => format!(
                "  RUNS PROGRAM id {other}, not the pinned one (its pin was removed); run \
                 `edgeblock attach {}` to switch it",
                i.name
            ),
            (false, None) => "  NOT RUNNING (interface gone or link broken)".to_owned(),
        };
        println!("interface:  {} ({} mode){health}", i.name, i.mode);
    }
    let p = &status.policy;
    match &p.applied {
        Some(at) => println!(
            "policy:     generation {}, hash {}, applied {at}",
            p.generation, p.hash
        ),
        None => println!("policy:     none applied"),
    }
    println!("malformed:  {}", p.malformed);
    let e = &status.entries;
    println!(
        "entries:    dst v4 {}, src v4 {}, dst v6 {}, src v6 {} ({} rules)",
        e.dst_v4, e.src_v4, e.dst_v6, e.src_v6, status.rules
    );
    println!("map memory: {}", human(status.map_memory_bytes));
    for m in &status.maps {
        println!("  {:<14} {:>10}", m.name, human(m.bytes));
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}
