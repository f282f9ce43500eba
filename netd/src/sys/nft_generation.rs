//! The generation of the network namespace's nftables ruleset: a counter the kernel bumps
//! on every change to any table, iptables-nft's included. Reading it is one netlink round
//! trip (NFT_MSG_GETGEN), where checking rules with `iptables -C` costs a process each.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// nlmsghdr, then nfgenmsg.
const HEADER: usize = 16 + 4;

/// The current generation of this network namespace's ruleset.
pub fn current() -> io::Result<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    parse(&reply)
}

fn request() -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER);
    m.extend_from_slice(&(HEADER as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, NFNETLINK_V0, res_id
    m
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("nftables generation: {what}"),
    )
}

/// The generation in the kernel's answer, or the error it answered with.
fn parse(reply: &[u8]) -> io::Result<u32> {
    let u16_at = |at: usize| {
        reply
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let len = reply
        .get(0..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| invalid("short answer"))?;
    let reply = reply
        .get(..len)
        .ok_or_else(|| invalid("truncated answer"))?;
    match u16_at(4) {
        Some(t) if t == libc::NLMSG_ERROR as u16 => {
            let errno = reply
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("short error"))?;
            return Err(io::Error::from_raw_os_error(-errno));
        }
        Some(t) if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN => {}
        other => return Err(invalid(&format!("unexpected message type {other:?}"))),
    }
    let mut at = HEADER;
    while let (Some(attr_len), Some(kind)) = (u16_at(at), u16_at(at + 2)) {
        let attr_len = attr_len as usize;
        if attr_len < 4 {
            break;
        }
        if kind & NLA_TYPE_MASK == NFTA_GEN_ID {
            let id = reply
                .get(at + 4..at + 8)
                .ok_or_else(|| invalid("short generation"))?;
            return Ok(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
        }
        at += attr_len.div_ceil(4) * 4;
    }
    Err(invalid("no generation in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of the test's own (a thread's, which nft inherits).
    #[test]
    fn the_generation_moves_with_every_change_and_only_then() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let nft = |script: &str| {
                let ok = std::process::Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin.take().unwrap().write_all(script.as_bytes())?;
                        c.wait()
                    })
                    .unwrap();
                assert!(ok.success(), "nft {script}");
            };
            let first = current().unwrap();
            assert_eq!(current().unwrap(), first, "reading it changed it");
            nft("add table inet gen_test\n");
            let second = current().unwrap();
            assert_ne!(second, first);
            nft("add chain inet gen_test c\nadd rule inet gen_test c counter\n");
            let third = current().unwrap();
            assert_ne!(third, second);
            // A rule flushed (how a hand or a script removes ours) moves it too.
            nft("flush chain inet gen_test c\n");
            assert_ne!(current().unwrap(), third);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn answers_are_read_with_care() {
        // A kernel error is reported as such.
        let mut error = vec![36, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        error.extend_from_slice(&request()[..16]);
        assert_eq!(parse(&error).unwrap_err().raw_os_error(), Some(libc::EPERM));
        // Cut short, or without the attribute: an error, never a made-up number.
        let mut answer = request();
        answer[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        assert!(parse(&answer).is_err());
        answer.extend_from_slice(&8u16.to_ne_bytes());
        answer.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        answer.extend_from_slice(&7u32.to_be_bytes());
        let len = answer.len() as u32;
        answer[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&answer).unwrap(), 7);
        assert!(parse(&answer[..answer.len() - 2]).is_err());
        assert!(parse(&[1, 2]).is_err());
    }
}
