//! `hpktainer ps`: this user's containers (after sweeping leftovers of dead runs).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::state;
use crate::sweep::{self, Status};

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub id: String,
    pub image: String,
    pub command: Vec<String>,
    pub created: u64,
    pub status: Status,
    pub pid: Option<i32>,
    pub runtime: String,
    pub detached: bool,
    pub address: Option<Ipv4Addr>,
}

/// The rows `ps` shows; `swept` receives the names the sweep removed.
pub fn rows(ctx: &Ctx, all: bool, swept: &mut Vec<String>) -> Result<Vec<Row>> {
    ctx.paths.ensure()?;
    swept.extend(sweep::sweep(
        &ctx.paths.containers,
        &ctx.paths.runtime_state,
        false,
    ));
    // Addresses come from hpk-netd when it answers; ps works without it.
    let addresses: HashMap<String, Ipv4Addr> = crate::netd::status(&ctx.socket)
        .map(|s| s.endpoints.into_iter().map(|e| (e.id, e.address)).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for dir in state::list(&ctx.paths.containers) {
        if dir.name().starts_with('.') {
            continue;
        }
        let Some((record, status)) = sweep::status_of(&dir, &ctx.paths.runtime_state) else {
            continue;
        };
        if status == Status::Exited && !all {
            continue;
        }
        let pid = (status != Status::Exited)
            .then(|| record.pid.or_else(|| dir.runtime_pid()))
            .flatten();
        rows.push(Row {
            address: addresses.get(&record.id).copied(),
            name: record.name,
            id: record.id,
            image: record.image,
            command: record.command,
            created: record.created,
            status,
            pid,
            runtime: record.runtime.name(),
            detached: record.detached,
        });
    }
    Ok(rows)
}

fn age(created: u64) -> String {
    let s = state::now().saturating_sub(created);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<20} {:<10} {:>8} {:<16} {:<8} {:<10} {:<28} COMMAND",
        "NAME", "STATUS", "PID", "ADDRESS", "RUNTIME", "CREATED", "IMAGE"
    );
    for r in rows {
        let status = match r.status {
            Status::Running if !r.detached => "running",
            Status::Running => "starting",
            Status::Detached => "running",
            Status::Exited => "exited",
            Status::Orphaned => "orphaned",
        };
        println!(
            "{:<20} {:<10} {:>8} {:<16} {:<8} {:<10} {:<28} {}",
            r.name,
            status,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.address.map_or("-".into(), |a| a.to_string()),
            r.runtime,
            age(r.created),
            r.image,
            r.command.join(" ")
        );
    }
}

pub fn ps(ctx: &Ctx, all: bool, json: bool) -> Result<()> {
    let mut swept = Vec::new();
    let rows = rows(ctx, all, &mut swept)?;
    for name in &swept {
        eprintln!("hpktainer: removed {name} (its run has ended)");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}
