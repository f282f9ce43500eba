//! Published ports, in Podman's syntax `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`:
//! parsed by `hpktainer run -p`, carried to the hook in an annotation and to hpk-netd in the
//! attach request.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The annotation carrying a container's published ports, comma-separated.
pub const ANNOTATION_PORTS: &str = "io.hpktainer.ports";

/// Ports below this need privileges on the host that a job's user does not have.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One `-p`: a port of the host (all its addresses, or one) to a port of the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl PortMapping {
    /// Parses one `-p` value; the error says what is wrong and what is expected.
    pub fn parse(text: &str) -> Result<PortMapping, String> {
        let usage = "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. 8080:80";
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "-p {text}: protocol {other:?} is not tcp or udp; {usage}"
                ))
            }
            None => (text, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [ip, h, c] => {
                let ip = ip
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("-p {text}: {ip:?} is not an IPv4 address; {usage}"))?;
                (Some(ip).filter(|ip| !ip.is_unspecified()), *h, *c)
            }
            _ => return Err(format!("-p {text}: {usage}")),
        };
        let port = |p: &str, which: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("-p {text}: the {which} port {p:?} is not 1-65535; {usage}"))
        };
        let mapping = PortMapping {
            host_ip,
            host_port: port(host_port, "host")?,
            container_port: port(container_port, "container")?,
            protocol,
        };
        if mapping.host_port < FIRST_UNPRIVILEGED_PORT {
            return Err(format!(
                "-p {text}: host port {} is below {FIRST_UNPRIVILEGED_PORT}, which only root may \
                 bind on the host; choose {FIRST_UNPRIVILEGED_PORT} or above (e.g. -p {}:{})",
                mapping.host_port,
                mapping.host_port as u32 + 8000,
                mapping.container_port
            ));
        }
        Ok(mapping)
    }

    /// Parses the annotation's comma-separated list.
    pub fn parse_list(text: &str) -> Result<Vec<PortMapping>, String> {
        let list: Vec<PortMapping> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PortMapping::parse)
            .collect::<Result<_, _>>()?;
        check_distinct(&list)?;
        Ok(list)
    }

    /// The annotation's value for `list`.
    pub fn format_list(list: &[PortMapping]) -> String {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Refuses one host port published twice (for the same protocol).
pub fn check_distinct(list: &[PortMapping]) -> Result<(), String> {
    for (i, a) in list.iter().enumerate() {
        if let Some(b) = list[..i]
            .iter()
            .find(|b| b.host_port == a.host_port && b.protocol == a.protocol)
        {
            return Err(format!(
                "-p {a} and -p {b} both publish host port {}/{}: give each its own",
                a.host_port, a.protocol
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_syntax_parses_and_prints_back() {
        let p = PortMapping::parse("8080:80").unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p = PortMapping::parse("192.0.2.13:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::new(192, 0, 2, 13)));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(PortMapping::parse(&p.to_string()).unwrap(), p);
        assert_eq!(PortMapping::parse("0.0.0.0:9000:90").unwrap().host_ip, None);
        let list = PortMapping::parse_list("8080:80, 9000:90/udp").unwrap();
        assert_eq!(
            PortMapping::parse_list(&PortMapping::format_list(&list)).unwrap(),
            list
        );
    }

    #[test]
    fn bad_ports_say_why() {
        let why = |t: &str| PortMapping::parse(t).unwrap_err();
        assert!(why("80:80").contains("below 1024"));
        assert!(why("8080").contains("expected [HOST_IP:]HOST_PORT"));
        assert!(why("8080:80/sctp").contains("\"sctp\" is not tcp or udp"));
        assert!(why("70000:80").contains("host port \"70000\""));
        assert!(why("8080:0").contains("container port \"0\""));
        assert!(why("host:8080:80").contains("not an IPv4 address"));
        let err = PortMapping::parse_list("8080:80,8080:81").unwrap_err();
        assert!(err.contains("both publish host port 8080/tcp"), "{err}");
        assert!(PortMapping::parse_list("8080:80,8080:80/udp").is_ok());
    }
}
