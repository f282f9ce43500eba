//! `--ulimit NAME=SOFT[:HARD]` (Podman's names; -1 is unlimited) into process.rlimits,
//! never above this user's own hard limit: nobody here may raise it (no CAP_SYS_RESOURCE
//! in a bubble), and the runtime would fail with a less clear message.

use anyhow::{anyhow, bail, Result};
use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use oci_spec::runtime::{PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec};

const NAMES: [(&str, PosixRlimitType, Resource); 15] = [
    ("core", PosixRlimitType::RlimitCore, Resource::RLIMIT_CORE),
    ("cpu", PosixRlimitType::RlimitCpu, Resource::RLIMIT_CPU),
    ("data", PosixRlimitType::RlimitData, Resource::RLIMIT_DATA),
    (
        "fsize",
        PosixRlimitType::RlimitFsize,
        Resource::RLIMIT_FSIZE,
    ),
    (
        "locks",
        PosixRlimitType::RlimitLocks,
        Resource::RLIMIT_LOCKS,
    ),
    (
        "memlock",
        PosixRlimitType::RlimitMemlock,
        Resource::RLIMIT_MEMLOCK,
    ),
    (
        "msgqueue",
        PosixRlimitType::RlimitMsgqueue,
        Resource::RLIMIT_MSGQUEUE,
    ),
    ("nice", PosixRlimitType::RlimitNice, Resource::RLIMIT_NICE),
    (
        "nofile",
        PosixRlimitType::RlimitNofile,
        Resource::RLIMIT_NOFILE,
    ),
    (
        "nproc",
        PosixRlimitType::RlimitNproc,
        Resource::RLIMIT_NPROC,
    ),
    ("rss", PosixRlimitType::RlimitRss, Resource::RLIMIT_RSS),
    (
        "rtprio",
        PosixRlimitType::RlimitRtprio,
        Resource::RLIMIT_RTPRIO,
    ),
    (
        "rttime",
        PosixRlimitType::RlimitRttime,
        Resource::RLIMIT_RTTIME,
    ),
    (
        "sigpending",
        PosixRlimitType::RlimitSigpending,
        Resource::RLIMIT_SIGPENDING,
    ),
    (
        "stack",
        PosixRlimitType::RlimitStack,
        Resource::RLIMIT_STACK,
    ),
];

fn value(text: &str, arg: &str) -> Result<u64> {
    if text == "-1" || text == "unlimited" {
        return Ok(RLIM_INFINITY);
    }
    text.parse::<u64>()
        .map_err(|_| anyhow!("--ulimit {arg}: {text:?} is not a number (or -1 for unlimited)"))
}

fn show(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Parses `NAME=SOFT[:HARD]` and checks it against this process's hard limit.
pub fn parse(arg: &str) -> Result<PosixRlimit> {
    let names = || NAMES.iter().map(|n| n.0).collect::<Vec<_>>().join(", ");
    let (name, values) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--ulimit {arg:?}: expected NAME=SOFT[:HARD], e.g. memlock=-1"))?;
    let (_, typ, resource) = NAMES.iter().find(|n| n.0 == name).ok_or_else(|| {
        anyhow!(
            "--ulimit {arg:?}: unknown limit {name:?} (one of {})",
            names()
        )
    })?;
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s, arg)?, value(h, arg)?),
        None => {
            let v = value(values, arg)?;
            (v, v)
        }
    };
    if soft > hard {
        bail!("--ulimit {arg}: the soft limit is above the hard one");
    }
    let (_, own_hard) =
        getrlimit(*resource).map_err(|e| anyhow!("cannot read the {name} limit: {e}"))?;
    if hard > own_hard {
        bail!(
            "--ulimit {arg}: above your own hard limit for {name} ({}; `ulimit -H -a` shows it, sizes in KiB): \
             a container cannot get more than its user has; ask the site to raise it \
             (limits.conf, or the job's limits: Slurm's PropagateResourceLimits)",
            show(own_hard)
        );
    }
    Ok(PosixRlimitBuilder::default()
        .typ(*typ)
        .soft(soft)
        .hard(hard)
        .build()
        .expect("an rlimit builds"))
}

/// Sets `limits` in `spec`, replacing limits of the same kind.
pub fn apply(spec: &mut Spec, limits: &[PosixRlimit]) {
    if limits.is_empty() {
        return;
    }
    let Some(mut process) = spec.process().clone() else {
        return;
    };
    let mut all = process.rlimits().clone().unwrap_or_default();
    for l in limits {
        all.retain(|x| x.typ() != l.typ());
        all.push(*l);
    }
    process.set_rlimits(Some(all));
    spec.set_process(Some(process));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_stay_under_our_own() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let l = parse(&format!("nofile=10:{hard}")).unwrap();
        assert_eq!((l.soft(), l.hard()), (10, hard));
        let l = parse("nofile=12").unwrap();
        assert_eq!((l.soft(), l.hard()), (12, 12));
        assert!(parse("nofile=20:10").is_err());
        assert!(parse("bogus=1")
            .unwrap_err()
            .to_string()
            .contains("memlock"));
        assert!(parse("nofile").is_err());
        assert!(parse("nofile=x").is_err());
        if hard != RLIM_INFINITY {
            let e = parse("nofile=-1").unwrap_err().to_string();
            assert!(
                e.contains("hard limit") && e.contains(&hard.to_string()),
                "{e}"
            );
        }
        let mut spec = Spec::default();
        apply(&mut spec, &[parse("nofile=12").unwrap()]);
        let limits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
        let nofile: Vec<_> = limits
            .iter()
            .filter(|l| l.typ() == PosixRlimitType::RlimitNofile)
            .collect();
        assert_eq!(nofile.len(), 1);
        assert_eq!(nofile[0].soft(), 12);
    }
}
