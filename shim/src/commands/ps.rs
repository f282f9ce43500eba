//! `hpktainer ps`: this user's containers (after sweeping leftovers of dead runs).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::Result;
use hpk_hook::proto::Status as NetStatus;
use serde::Serialize;

use super::Ctx;
use crate::state;
use crate::sweep::{self, Entry, Status};

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
    /// Published ports (`0.0.0.0:8080->80/tcp`).
    pub ports: Vec<String>,
}

/// The rows `ps` shows, from one sweep; `net`: hpk-netd's status, for the addresses (ps
/// works without it). `swept` receives the names the sweep removed.
pub fn rows(
    ctx: &Ctx,
    all: bool,
    net: Option<&NetStatus>,
    swept: &mut Vec<String>,
) -> Result<Vec<Row>> {
    ctx.paths.ensure()?;
    let result = sweep::sweep(&ctx.paths.containers, &ctx.paths.runtime_state, false);
    swept.extend(result.removed);
    let addresses: HashMap<&str, Ipv4Addr> = net
        .map(|s| {
            s.endpoints
                .iter()
                .map(|e| (e.id.as_str(), e.address))
                .collect()
        })
        .unwrap_or_default();
    let mut ports: HashMap<&str, Vec<String>> = HashMap::new();
    for p in net.map(|s| s.published.as_slice()).unwrap_or_default() {
        ports
            .entry(p.container.as_str())
            .or_default()
            .push(published(p));
    }
    let rows = result
        .kept
        .into_iter()
        .filter(|e| all || e.status != Status::Exited)
        .map(|entry| {
            let Entry {
                dir,
                record,
                status,
            } = entry;
            Row {
                address: addresses.get(record.id()).copied(),
                ports: ports.remove(record.id()).unwrap_or_default(),
                id: record.id().to_string(),
                pid: (status != Status::Exited)
                    .then(|| dir.runtime_pid())
                    .flatten(),
                name: record.name,
                image: record.image,
                command: record.command,
                created: record.created,
                status,
                runtime: record.runtime.name(),
                detached: record.detached,
            }
        })
        .collect();
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
        "{:<20} {:<10} {:>8} {:<16} {:<8} {:<10} {:<28} {:<24} COMMAND",
        "NAME", "STATUS", "PID", "ADDRESS", "RUNTIME", "CREATED", "IMAGE", "PORTS"
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
            "{:<20} {:<10} {:>8} {:<16} {:<8} {:<10} {:<28} {:<24} {}",
            r.name,
            status,
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.address.map_or("-".into(), |a| a.to_string()),
            r.runtime,
            age(r.created),
            r.image,
            if r.ports.is_empty() {
                "-".to_string()
            } else {
                r.ports.join(",")
            },
            r.command.join(" ")
        );
    }
}

pub fn ps(ctx: &Ctx, all: bool, json: bool) -> Result<()> {
    // Addresses come from hpk-netd when it answers.
    let net = crate::netd::status(&ctx.socket).ok();
    let mut swept = Vec::new();
    let rows = rows(ctx, all, net.as_ref(), &mut swept)?;
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

/// `0.0.0.0:8080->80/tcp`, as Podman prints a published port.
fn published(p: &hpk_hook::proto::PublishedPort) -> String {
    format!(
        "{}->{}/{}",
        p.listening, p.mapping.container_port, p.mapping.protocol
    )
}

/// `hpktainer port [NAME]`: `80/tcp -> 0.0.0.0:8080` per published port.
pub fn port(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let net = crate::netd::status(&ctx.socket)?;
    let mut swept = Vec::new();
    let rows = rows(ctx, false, Some(&net), &mut swept)?;
    if let Some(name) = name {
        if !rows.iter().any(|r| r.name == name) {
            anyhow::bail!("no running container named {name} (see `hpktainer ps`)");
        }
    }
    for row in rows.iter().filter(|r| name.is_none_or(|n| r.name == n)) {
        for p in net.published.iter().filter(|p| p.container == row.id) {
            let line = format!(
                "{}/{} -> {}",
                p.mapping.container_port, p.mapping.protocol, p.listening
            );
            match name {
                Some(_) => println!("{line}"),
                None => println!("{}\t{line}", row.name),
            }
        }
    }
    Ok(())
}
