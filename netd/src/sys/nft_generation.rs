//! The generation of the network namespace's nftables ruleset: a counter the kernel bumps
//! on every change to any table, iptables-nft's included. Reading it is one netlink round
//! trip (NFT_MSG_GETGEN), where checking rules with `iptables -C` costs a process each.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{GenAttribute, GenMessage, NfTablesMessage};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// The current generation of this network namespace's ruleset.
pub fn current() -> io::Result<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    generation_in(&reply)
}

fn request() -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let get = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
    );
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(get));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("nftables generation: {what}"),
    )
}

/// The generation in the kernel's answer, or the error it answered with.
fn generation_in(reply: &[u8]) -> io::Result<u32> {
    let message = NetlinkMessage::<NetfilterMessage>::deserialize(reply).map_err(invalid)?;
    match message.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(generation)),
            ..
        }) => generation
            .attributes
            .iter()
            .find_map(|a| match a {
                GenAttribute::Id(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| invalid("no generation in the answer")),
        other => Err(invalid(format!("unexpected answer {other:?}"))),
    }
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
        assert_eq!(
            generation_in(&error).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        // Cut short, or without the attribute: an error, never a made-up number.
        const NEWGEN: u16 = (10 << 8) | 15; // NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN
        let mut answer = request();
        answer[4..6].copy_from_slice(&NEWGEN.to_ne_bytes());
        assert!(generation_in(&answer).is_err());
        answer.extend_from_slice(&8u16.to_ne_bytes());
        answer.extend_from_slice(&1u16.to_ne_bytes()); // NFTA_GEN_ID
        answer.extend_from_slice(&7u32.to_be_bytes());
        let len = answer.len() as u32;
        answer[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(generation_in(&answer).unwrap(), 7);
        assert!(generation_in(&answer[..answer.len() - 2]).is_err());
        assert!(generation_in(&[1, 2]).is_err());
    }
}
