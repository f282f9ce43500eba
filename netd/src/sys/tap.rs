//! Tap devices opened through `/dev/net/tun`, with the virtio-net header and offloads.
//!
//! With `IFF_VNET_HDR` every read and write carries a `virtio_net_hdr` in front of the
//! Ethernet frame; with `TUNSETOFFLOAD` the kernel hands us (and accepts from us) GSO frames
//! of up to 64 KiB with partial checksums. Copying such frames unchanged between two taps
//! moves a whole TCP window's worth of segments per read/write pair, which is what makes a
//! userspace data path close to a veth pair.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

/// Path of the tun/tap clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Largest MTU a tap accepts: 65535 bytes of frame minus the 14-byte Ethernet header.
pub const MAX_TAP_MTU: u32 = 65521;

/// Largest Ethernet frame (without virtio-net header) a tap reads or writes.
pub const MAX_FRAME: usize = 65535;

/// Size of the virtio-net header we ask the kernel to use (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;

/// Offloads asked for, most first; a kernel without USO (before 6.2) gets the second set.
const OFFLOAD_SETS: [(libc::c_uint, &str); 3] = [
    (
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_USO4
            | libc::TUN_F_USO6,
        "csum,tso4,tso6,tso_ecn,uso4,uso6",
    ),
    (
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
        "csum,tso4,tso6,tso_ecn",
    ),
    (libc::TUN_F_CSUM, "csum"),
];

#[derive(Debug, Error)]
pub enum TapError {
    #[error("{TUN_DEVICE} does not exist: load the tun module (modprobe tun) or bind-mount /dev/net/tun into this container")]
    NoTunDevice,
    #[error("cannot open {TUN_DEVICE}: permission denied (it must be readable and writable by this user; distributions ship it mode 0666)")]
    TunAccess,
    #[error("creating tap {name:?} needs CAP_NET_ADMIN in the owning user namespace of its network namespace; run as root or inside the bubble's user namespace")]
    NoCapNetAdmin { name: String },
    #[error("interface name {name:?} is already taken in this network namespace; pick another name or remove the existing link")]
    NameTaken { name: String },
    #[error("invalid tap name {name:?}: 1 to 15 characters, no '/', whitespace or NUL")]
    BadName { name: String },
    #[error("fd {fd} is not an open tap device: {source}")]
    NotATap { fd: RawFd, source: io::Error },
    #[error("no tap named {name:?} to attach to: create it first (ip tuntap add {name} mode tap), or let the daemon create it")]
    Missing { name: String },
    #[error("{what} on tap {name:?}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: io::Error,
    },
}

/// Options for a new tap.
#[derive(Clone, Copy, Debug)]
pub struct TapOptions {
    /// Carry a virtio-net header and enable offloads.
    pub vnet_hdr: bool,
}

/// An open tap device. Non-persistent: the interface disappears when the last fd closes.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
    offloads: &'static str,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReqFlags {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Checks a Linux interface name (IFNAMSIZ - 1 bytes, no separators).
pub fn validate_ifname(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName {
            name: name.to_owned(),
        })
    }
}

fn interface_exists(name: &str) -> bool {
    CString::new(name)
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false)
}

impl Tap {
    /// Creates a new tap named `name` in the calling thread's network namespace.
    pub fn create(name: &str, opts: TapOptions) -> Result<Tap, TapError> {
        Self::open_named(name, opts, false)
    }

    /// Attaches to an existing persistent tap (made by `ip tuntap add NAME mode tap`), as
    /// the original tool does when told `-create-tap=false`.
    pub fn attach(name: &str, opts: TapOptions) -> Result<Tap, TapError> {
        Self::open_named(name, opts, true)
    }

    fn open_named(name: &str, opts: TapOptions, existing: bool) -> Result<Tap, TapError> {
        validate_ifname(name)?;
        // TUNSETIFF on an existing, unused persistent tap silently attaches to it: only
        // do that when asked to, and refuse a taken name otherwise.
        if interface_exists(name) != existing {
            let name = name.to_owned();
            return Err(if existing {
                TapError::Missing { name }
            } else {
                TapError::NameTaken { name }
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                io::ErrorKind::PermissionDenied => TapError::TunAccess,
                _ => TapError::Ioctl {
                    what: "open /dev/net/tun",
                    name: name.to_owned(),
                    source: e,
                },
            })?;
        let mut flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR as libc::c_short;
        }
        let mut req = IfReqFlags::new(name, flags);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which IfReqFlags lays out.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NoCapNetAdmin {
                    name: name.to_owned(),
                },
                Some(libc::EBUSY) | Some(libc::EEXIST) | Some(libc::EINVAL) => {
                    TapError::NameTaken {
                        name: name.to_owned(),
                    }
                }
                _ => TapError::Ioctl {
                    what: "TUNSETIFF",
                    name: name.to_owned(),
                    source: err,
                },
            });
        }
        let mut tap = Tap {
            file,
            name: req.name(),
            vnet_hdr: opts.vnet_hdr,
            offloads: "none",
        };
        if opts.vnet_hdr {
            tap.enable_vnet_hdr()?;
        }
        Ok(tap)
    }

    /// Adopts an already-open tap fd handed over by a parent process.
    ///
    /// The fd's flags decide whether it carries the virtio-net header; when it does, our
    /// header size and offloads are applied to it.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReqFlags::new("", 0);
        // SAFETY: TUNGETIFF fills a `struct ifreq`.
        if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotATap {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        if req.flags & libc::IFF_TAP as libc::c_short == 0 {
            return Err(TapError::NotATap {
                fd: raw,
                source: io::Error::other("it is a tun (layer 3) device, not a tap"),
            });
        }
        let vnet_hdr = req.flags & libc::IFF_VNET_HDR as libc::c_short != 0;
        let mut tap = Tap {
            file: File::from(fd),
            name: req.name(),
            vnet_hdr,
            offloads: "none",
        };
        if vnet_hdr {
            tap.enable_vnet_hdr()?;
        }
        Ok(tap)
    }

    /// Adopts a raw fd number inherited from the parent.
    ///
    /// # Safety
    /// `fd` must be an open descriptor owned by nobody else in this process.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Tap, TapError> {
        Tap::from_fd(OwnedFd::from_raw_fd(fd))
    }

    fn enable_vnet_hdr(&mut self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(self.ioctl_error("TUNSETVNETHDRSZ"));
        }
        self.offloads = self.set_offloads(true)?;
        Ok(())
    }

    /// Turns checksum/segmentation offloads on (the richest set the kernel takes) or off.
    /// Off, the kernel hands out only whole, checksummed frames (with a zeroed header).
    pub fn set_offloads(&self, on: bool) -> Result<&'static str, TapError> {
        let sets: &[(libc::c_uint, &'static str)] = if on { &OFFLOAD_SETS } else { &[(0, "none")] };
        let mut last = None;
        for (bits, label) in sets {
            match self.set_offload_bits(*bits) {
                Ok(()) => return Ok(label),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one offload set"))
    }

    /// Offers exactly the offloads in `bits` (TUN_F_*), for a reader that handles only
    /// some kinds of GSO frames.
    pub fn set_offload_bits(&self, bits: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flag word by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                bits as libc::c_ulong,
            )
        } < 0
        {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            what,
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads and writes carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The offloads the kernel accepted, for logs.
    pub fn offloads(&self) -> &'static str {
        self.offloads
    }

    /// Reads one frame (with its virtio-net header when enabled).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.file, buf).map_err(io::Error::from)
    }

    /// Writes one whole frame; a tap never accepts part of one.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.file, frame).map_err(io::Error::from)
    }

    /// Writes one frame given as a virtio-net header and the Ethernet frame, in one call.
    pub fn write_frame_with_header(&self, header: &[u8], frame: &[u8]) -> io::Result<usize> {
        let parts = [io::IoSlice::new(header), io::IoSlice::new(frame)];
        nix::sys::uio::writev(&self.file, &parts).map_err(io::Error::from)
    }

    /// Switches the fd between blocking and non-blocking reads.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: plain fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl From<Tap> for OwnedFd {
    fn from(tap: Tap) -> OwnedFd {
        tap.file.into()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(validate_ifname("tap0").is_ok());
        assert!(validate_ifname("hpk0123456789ab").is_ok());
        for bad in ["", "hpk0123456789abc", "a/b", "a b", ".", "..", "eth0:1"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ifreq_round_trips_the_name() {
        let req = IfReqFlags::new("hpk-abc", 0);
        assert_eq!(req.name(), "hpk-abc");
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
