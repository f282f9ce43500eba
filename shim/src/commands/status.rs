//! `hpktainer status`: the bubble's network as hpk-netd reports it (subnet, lease,
//! peers: the other bubbles of the cluster, endpoints, counters) and this user's
//! containers.

use anyhow::Result;
use serde_json::json;

use super::Ctx;

pub fn status(ctx: &Ctx, as_json: bool) -> Result<()> {
    let net = crate::netd::status(&ctx.socket);
    let mut swept = Vec::new();
    let rows = super::ps::rows(ctx, true, net.as_ref().ok(), &mut swept)?;
    if as_json {
        let value = match &net {
            Ok(s) => json!({"socket": ctx.socket, "network": s, "containers": rows}),
            Err(e) => {
                json!({"socket": ctx.socket, "network": null, "error": format!("{e:#}"), "containers": rows})
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        match &net {
            Ok(s) => print!("{}", hpk_hook::report::table(s)),
            Err(e) => println!("network     unavailable: {e:#}"),
        }
        println!();
        super::ps::print_table(&rows);
    }
    // Containers are shown either way; a dead hpk-netd is still an error for scripts.
    net.map(drop)
}
