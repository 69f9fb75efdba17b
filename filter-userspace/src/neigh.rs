//! Resolve a notice target: the egress interface's index and MAC, and the next hop's MAC from
//! the kernel's neighbour table (netlink), asking the kernel to resolve it when it is not
//! there yet.

use std::{
    fs, io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NeighError {
    #[error("notice interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("reading the MAC address of {iface}: {detail}")]
    InterfaceMac { iface: String, detail: String },
    #[error(
        "next hop {next_hop} is not in the neighbour table of {iface} after {waited:?} (is it up and on that link? see `ip neigh show dev {iface}`)"
    )]
    Unresolved {
        iface: String,
        next_hop: IpAddr,
        waited: Duration,
    },
    #[error("reading the neighbour table: {0}")]
    Netlink(String),
}

/// What the XDP program needs to send a frame to a notice target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

pub fn resolve(iface: &str, next_hop: IpAddr, wait: Duration) -> Result<Resolved, NeighError> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|_| NeighError::NoInterface {
        iface: iface.into(),
    })?;
    let src_mac = interface_mac(iface)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NeighError::Netlink(e.to_string()))?;
    let start = Instant::now();
    let mut provoked = false;
    loop {
        if let Some(dst_mac) = rt.block_on(lookup(ifindex, next_hop))? {
            return Ok(Resolved {
                ifindex,
                src_mac,
                dst_mac,
            });
        }
        if start.elapsed() >= wait {
            return Err(NeighError::Unresolved {
                iface: iface.into(),
                next_hop,
                waited: wait,
            });
        }
        if !provoked {
            // Any packet towards the next hop makes the kernel resolve it (ARP or NDP).
            provoke(iface, next_hop);
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MAC of a usable neighbour entry for `addr` on `ifindex`.
async fn lookup(ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, NeighError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NeighError::Netlink(e.to_string()))?;
    let task = tokio::spawn(conn);
    let mut dump = handle.neighbours().get().execute();
    let mut found = None;
    while let Some(msg) = dump
        .try_next()
        .await
        .map_err(|e| NeighError::Netlink(e.to_string()))?
    {
        let usable = matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        if msg.header.ifindex != ifindex || !usable {
            continue;
        }
        let mut dst = None;
        let mut lladdr = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    dst = Some(IpAddr::V4(*a));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    dst = Some(IpAddr::V6(*a));
                }
                NeighbourAttribute::LinkLayerAddress(mac) => {
                    lladdr = <[u8; 6]>::try_from(&mac[..]).ok()
                }
                _ => {}
            }
        }
        if dst == Some(addr) && lladdr.is_some() {
            found = lladdr;
        }
    }
    task.abort();
    Ok(found)
}

/// Send one datagram to the discard port of `next_hop` out of `iface`; errors are irrelevant
/// (the point is the neighbour resolution it triggers).
fn provoke(iface: &str, next_hop: IpAddr) {
    let local: SocketAddr = match next_hop {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let Ok(sock) = UdpSocket::bind(local) else {
        return;
    };
    // SAFETY: setsockopt with a valid descriptor and a buffer of the stated length.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        );
    }
    let _ = sock.send_to(b"edgeblock", SocketAddr::new(next_hop, 9));
}

fn interface_mac(iface: &str) -> Result<[u8; 6], NeighError> {
    let err = |detail: String| NeighError::InterfaceMac {
        iface: iface.into(),
        detail,
    };
    let text = fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e: io::Error| err(e.to_string()))?;
    parse_mac(text.trim()).ok_or_else(|| err(format!("{:?} is not a MAC address", text.trim())))
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:ff"),
            Some([2, 0, 0x5e, 0x10, 0, 0xff])
        );
        assert_eq!(parse_mac("02:00:5e:10:00"), None);
        assert_eq!(parse_mac("02:00:5e:10:00:ff:01"), None);
        assert_eq!(parse_mac("zz:00:5e:10:00:ff"), None);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let err = resolve("eb-nope0", "192.0.2.1".parse().unwrap(), Duration::ZERO)
            .expect_err("no such interface");
        assert!(err.to_string().contains("eb-nope0"), "{err}");
    }
}
