//! Lockout protection: refuse a policy that would cut this host off from its own network.
//!
//! An XDP filter sits in front of the whole stack, so one careless `0.0.0.0/0` can take away
//! the SSH session that would have undone it. `apply` therefore runs [`check`] against the
//! host's addresses and default gateways ([`HostAddrs::discover`]) and the policy's `protect`
//! prefixes, and refuses the policy on any [`LockoutError`] unless the deciding rule says
//! `allow_local = true` or the user passed `--force` (the caller decides about `--force`;
//! [`check`] always reports).
//!
//! # API
//!
//! - [`HostAddrs`] `{ local: Vec<(IpAddr, String)>, gateways: Vec<IpAddr> }` and
//!   [`HostAddrs::discover`]`() -> io::Result<HostAddrs>` (getifaddrs, `/proc/net/route`,
//!   `/proc/net/ipv6_route`).
//! - [`parse_proc_net_route`] / [`parse_proc_net_ipv6_route`]: the default gateways in the text
//!   of those files, as pure functions.
//! - [`check`]`(&Compiled, &HostAddrs, protect) -> Vec<LockoutError>`.
//!
//! # What is checked
//!
//! - Host addresses and gateways: each direction is resolved on its own (longest prefix, as
//!   the kernel does), with the address as destination and again as source. A blocking rule
//!   that decides is an error; a `pass` exception that carves the address out of a wider block
//!   saves it. Each direction is resolved alone, rather than through
//!   [`Compiled::verdict`] with a placeholder for the other address, because a placeholder
//!   such as `0.0.0.0` could itself be covered by a source rule and be blamed wrongly.
//! - `protect` prefixes: by overlap. Any blocking rule in either direction with a prefix that
//!   contains a protected prefix or lies inside one is an error, whether or not a pass
//!   exception would let some of the protected addresses through. A protected prefix stands
//!   for a whole network whose addresses we do not enumerate, so "some exception probably
//!   covers the part that matters" is not something this check can credit.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::compile::{Compiled, CompiledRule, action_name};
use crate::policy::{Direction, Location, PrefixEntry};

/// Addresses this host must stay reachable on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// Addresses configured on interfaces, with the interface name; loopback excluded.
    pub local: Vec<(IpAddr, String)>,
    /// Next hops of the default routes (main table).
    pub gateways: Vec<IpAddr>,
}

impl HostAddrs {
    /// Read the host's addresses and default gateways.
    ///
    /// Loopback addresses (127.0.0.0/8, ::1) are skipped: their traffic never reaches a NIC's
    /// XDP hook, so no rule can cut it. A missing `/proc/net/ipv6_route` (IPv6 disabled) means
    /// no IPv6 gateways. Only the main routing table is visible in `/proc`; default routes in
    /// policy-routing tables are not found.
    pub fn discover() -> io::Result<Self> {
        let local = local_addresses()?;
        let invalid = |e: RouteParseError| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut gateways: Vec<IpAddr> = Vec::new();
        let v4 = read_if_present("/proc/net/route")?;
        gateways.extend(
            parse_proc_net_route(&v4)
                .map_err(invalid)?
                .into_iter()
                .map(IpAddr::V4),
        );
        let v6 = read_if_present("/proc/net/ipv6_route")?;
        gateways.extend(
            parse_proc_net_ipv6_route(&v6)
                .map_err(invalid)?
                .into_iter()
                .map(IpAddr::V6),
        );
        // Several default routes (one per uplink, or the same one at two metrics) often share
        // a next hop.
        let mut seen = Vec::new();
        gateways.retain(|g| {
            let new = !seen.contains(g);
            seen.push(*g);
            new
        });
        Ok(Self { local, gateways })
    }
}

fn read_if_present(path: &str) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        other => other,
    }
}

/// Owns the list returned by `getifaddrs` and frees it once.
struct IfAddrs(*mut libc::ifaddrs);

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful getifaddrs, and this is the only place it
        // is freed.
        unsafe { libc::freeifaddrs(self.0) }
    }
}

fn local_addresses() -> io::Result<Vec<(IpAddr, String)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid place for getifaddrs to store the list pointer.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let list = IfAddrs(head);
    let mut found = Vec::new();
    let mut node = list.0.cast_const();
    while !node.is_null() {
        // SAFETY: `node` is the head of the list or an `ifa_next` link in it; the list stays
        // allocated until `list` is dropped at the end of this function.
        let ifa = unsafe { &*node };
        node = ifa.ifa_next.cast_const();
        // SAFETY: getifaddrs sets `ifa_addr` to null or to a sockaddr sized for its family.
        let Some(addr) = (unsafe { sockaddr_ip(ifa.ifa_addr) }) else {
            continue;
        };
        if addr.is_loopback() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a non-null, NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        found.push((addr, name.to_string_lossy().into_owned()));
    }
    drop(list);
    Ok(found)
}

/// The IP address in a `sockaddr`, if it is IPv4 or IPv6.
///
/// # Safety
/// `sa` is null or points to a sockaddr whose storage is as large as its `sa_family` implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null, and every sockaddr starts with the family (caller's contract).
    let family = unsafe { (*sa).sa_family };
    match i32::from(family) {
        libc::AF_INET => {
            // SAFETY: AF_INET storage is a sockaddr_in (caller's contract). Read unaligned:
            // nothing promises the buffer is aligned for the wider type.
            let sin = unsafe { sa.cast::<libc::sockaddr_in>().read_unaligned() };
            Some(IpAddr::V4(Ipv4Addr::from(
                sin.sin_addr.s_addr.to_ne_bytes(),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6 storage is a sockaddr_in6 (caller's contract); unaligned as above.
            let sin6 = unsafe { sa.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// A line of a `/proc/net/*route` file that is not in the kernel's format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: unexpected route line {text:?}")]
pub struct RouteParseError {
    pub file: &'static str,
    pub line: usize,
    pub text: String,
}

/// Default gateways in the text of `/proc/net/route`: rows with destination and mask
/// `00000000` and a non-zero gateway.
///
/// The kernel prints each address as the `%08X` of a network-order `__be32` read as a native
/// integer, so the bytes come back with `to_ne_bytes` (on x86 the hex reads little-endian:
/// `0102000A` is 10.0.2.1).
pub fn parse_proc_net_route(text: &str) -> Result<Vec<Ipv4Addr>, RouteParseError> {
    let mut gateways = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if index == 0 && line.starts_with("Iface") || line.trim().is_empty() {
            continue;
        }
        let error = || RouteParseError {
            file: "/proc/net/route",
            line: index + 1,
            text: line.to_string(),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| {
            fields
                .get(i)
                .and_then(|f| u32::from_str_radix(f, 16).ok())
                .ok_or_else(error)
        };
        let (destination, gateway, mask) = (hex(1)?, hex(2)?, hex(7)?);
        if destination == 0 && mask == 0 && gateway != 0 {
            gateways.push(Ipv4Addr::from(gateway.to_ne_bytes()));
        }
    }
    Ok(gateways)
}

/// Default gateways in the text of `/proc/net/ipv6_route`: rows for `::/0` with a non-zero
/// next hop. The fields are destination, its length, source, its length, next hop, metric,
/// refcount, use, flags, device; addresses are 32 hex digits in network order.
pub fn parse_proc_net_ipv6_route(text: &str) -> Result<Vec<Ipv6Addr>, RouteParseError> {
    let mut gateways = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = || RouteParseError {
            file: "/proc/net/ipv6_route",
            line: index + 1,
            text: line.to_string(),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            return Err(error());
        }
        let address = |i: usize| {
            fields
                .get(i)
                .filter(|f| f.len() == 32)
                .and_then(|f| u128::from_str_radix(f, 16).ok())
                .ok_or_else(error)
        };
        let (destination, next_hop) = (address(0)?, address(4)?);
        let length = u8::from_str_radix(fields[1], 16).map_err(|_| error())?;
        if destination == 0 && length == 0 && next_hop != 0 {
            gateways.push(Ipv6Addr::from(next_hop));
        }
    }
    Ok(gateways)
}

/// A rule that would cut the host off. Every variant names the rule and where it is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockoutError {
    #[error(
        "rule {rule:?} ({location}) would {} traffic {} {addr}, an address of this host \
         ({interface}), with its prefix {prefix}; {FIX}",
        action_name(*action),
        to_or_from(*direction)
    )]
    LocalAddress {
        rule: String,
        location: Location,
        action: u8,
        direction: Direction,
        prefix: IpNet,
        addr: IpAddr,
        interface: String,
    },

    #[error(
        "rule {rule:?} ({location}) would {} traffic {} {addr}, a default gateway of this \
         host, with its prefix {prefix}; {FIX}",
        action_name(*action),
        to_or_from(*direction)
    )]
    Gateway {
        rule: String,
        location: Location,
        action: u8,
        direction: Direction,
        prefix: IpNet,
        addr: IpAddr,
    },

    #[error(
        "rule {rule:?} ({location}) would {} traffic {} {prefix}, which overlaps protected \
         prefix {protected} ({protected_at}); {FIX}",
        action_name(*action),
        to_or_from(*direction)
    )]
    Protected {
        rule: String,
        location: Location,
        action: u8,
        direction: Direction,
        prefix: IpNet,
        protected: IpNet,
        protected_at: Location,
    },
}

const FIX: &str = "add allow_local = true to the rule or pass --force";

fn to_or_from(direction: Direction) -> &'static str {
    match direction {
        Direction::Dst => "to",
        Direction::Src => "from",
    }
}

/// Every way `compiled` would cut this host off; empty if none. See the module docs for
/// exactly what is checked.
pub fn check(compiled: &Compiled, host: &HostAddrs, protect: &[PrefixEntry]) -> Vec<LockoutError> {
    let mut errors = Vec::new();
    for (addr, interface) in &host.local {
        for direction in [Direction::Dst, Direction::Src] {
            if let Some((rule, prefix)) = blocking(compiled, direction, *addr) {
                errors.push(LockoutError::LocalAddress {
                    rule: rule.name.clone(),
                    location: rule.location.clone(),
                    action: rule.action,
                    direction,
                    prefix,
                    addr: *addr,
                    interface: interface.clone(),
                });
            }
        }
    }
    for addr in &host.gateways {
        for direction in [Direction::Dst, Direction::Src] {
            if let Some((rule, prefix)) = blocking(compiled, direction, *addr) {
                errors.push(LockoutError::Gateway {
                    rule: rule.name.clone(),
                    location: rule.location.clone(),
                    action: rule.action,
                    direction,
                    prefix,
                    addr: *addr,
                });
            }
        }
    }
    for protected in protect {
        for direction in [Direction::Dst, Direction::Src] {
            for (prefix, index) in compiled.tables.overlapping(direction, protected.net) {
                let Some(rule) = compiled.rules.get(index) else {
                    continue;
                };
                if rule.blocks() && !rule.allow_local {
                    errors.push(LockoutError::Protected {
                        rule: rule.name.clone(),
                        location: rule.location.clone(),
                        action: rule.action,
                        direction,
                        prefix,
                        protected: protected.net,
                        protected_at: protected.location.clone(),
                    });
                }
            }
        }
    }
    errors
}

/// The rule that decides `addr` in `direction`, if it blocks and is not allowed to.
fn blocking(
    compiled: &Compiled,
    direction: Direction,
    addr: IpAddr,
) -> Option<(&CompiledRule, IpNet)> {
    let verdict = compiled.resolve(direction, addr);
    let rule = compiled.rules.get(verdict.rule?)?;
    (rule.blocks() && !rule.allow_local).then_some((rule, verdict.prefix?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compile::compile;
    use crate::policy::{Policy, parse};

    fn policy(text: &str) -> Policy {
        let now = "2026-06-01T00:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("test timestamp: {e}"));
        parse(text, Path::new("policy.toml"), now, |p| {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no include {} in this test", p.display()),
            ))
        })
        .unwrap_or_else(|e| panic!("policy should parse:\n{e}\n--- policy:\n{text}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("test address {s}: {e}"))
    }

    fn host() -> HostAddrs {
        HostAddrs {
            local: vec![
                (ip("192.0.2.10"), "eth0".to_string()),
                (ip("2001:db8:c::10"), "eth0".to_string()),
            ],
            gateways: vec![ip("192.0.2.1"), ip("fe80::1")],
        }
    }

    /// Lockout errors for `text` on [`host`], as displayed.
    fn problems(text: &str) -> Vec<String> {
        let p = policy(text);
        check(&compile(&p), &host(), &p.protect)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn rule(name: &str, extra: &str, prefixes: &str) -> String {
        format!("[[rule]]\nname = \"{name}\"\n{extra}\nprefixes = [{prefixes}]\n")
    }

    /// Redirect and reject take the traffic away from this host just as drop does.
    #[test]
    fn redirect_and_reject_count_as_blocking() {
        let target = "[notice.n]\ninterface = \"eth1\"\nnext_hop = \"198.51.100.250\"\n";
        let text = format!(
            "protect = [\"198.51.100.0/24\"]\n{target}{}{}",
            rule(
                "redir",
                "action = \"redirect\"\nnotice = \"n\"",
                "\"192.0.2.10\""
            ),
            rule(
                "rej",
                "direction = \"src\"\naction = \"reject\"",
                "\"198.51.100.0/25\""
            ),
        );
        let errors = problems(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "rule \"redir\" (policy.toml:6) would redirect traffic to 192.0.2.10, an address \
                 of this host (eth0)"
            ),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with(
                "rule \"rej\" (policy.toml:11) would reject traffic from 198.51.100.0/25, which \
                 overlaps protected prefix 198.51.100.0/24"
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn local_address_hit() {
        let errors = problems(&rule("block-all", "action = \"drop\"", "\"192.0.2.0/25\""));
        assert_eq!(
            errors,
            [
                "rule \"block-all\" (policy.toml:2) would drop traffic to 192.0.2.10, an address \
                 of this host (eth0), with its prefix 192.0.2.0/25; add allow_local = true to \
                 the rule or pass --force",
                "rule \"block-all\" (policy.toml:2) would drop traffic to 192.0.2.1, a default \
                 gateway of this host, with its prefix 192.0.2.0/25; add allow_local = true to \
                 the rule or pass --force",
            ]
        );
    }

    #[test]
    fn local_v6_address_hit() {
        let errors = problems(&rule("v6", "action = \"drop\"", "\"2001:db8:c::/48\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("to 2001:db8:c::10, an address of this host (eth0)"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn gateway_hit() {
        let errors = problems(&rule("link-local", "action = \"drop\"", "\"fe80::/10\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("rule \"link-local\" (policy.toml:2)"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("to fe80::1, a default gateway of this host"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn src_rule_covering_host_or_gateway() {
        let errors = problems(&rule(
            "from-lan",
            "direction = \"src\"\naction = \"drop\"",
            "\"192.0.2.0/24\"",
        ));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].contains("would drop traffic from 192.0.2.10, an address of this host"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("would drop traffic from 192.0.2.1, a default gateway"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn pass_exception_carves_the_host_out() {
        let text = rule("block", "action = \"drop\"", "\"192.0.2.0/24\"")
            + &rule("me", "action = \"pass\"", "\"192.0.2.10\", \"192.0.2.1\"");
        assert_eq!(problems(&text), Vec::<String>::new());
        // A dst exception does not save the host from a src rule.
        let text = rule(
            "block",
            "direction = \"src\"\naction = \"drop\"",
            "\"192.0.2.0/24\"",
        ) + &rule("me", "action = \"pass\"", "\"192.0.2.10\", \"192.0.2.1\"");
        assert_eq!(problems(&text).len(), 2);
    }

    #[test]
    fn allow_local_permits_it() {
        let text = rule(
            "block-all",
            "action = \"drop\"\nallow_local = true",
            "\"0.0.0.0/0\", \"::/0\"",
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn pass_rules_never_lock_out() {
        let text = rule("ok", "action = \"pass\"", "\"0.0.0.0/0\", \"::/0\"");
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn unrelated_rules_are_fine() {
        let text = rule(
            "far",
            "action = \"drop\"",
            "\"203.0.113.0/24\", \"2001:db8:1::/64\"",
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn protect_overlap_rule_inside_protected() {
        let text = "protect = [\"198.51.100.0/24\"]\n".to_string()
            + &rule("narrow", "action = \"drop\"", "\"198.51.100.128/25\"");
        assert_eq!(
            problems(&text),
            [
                "rule \"narrow\" (policy.toml:3) would drop traffic to 198.51.100.128/25, which \
              overlaps protected prefix 198.51.100.0/24 (policy.toml:1); add allow_local = true \
              to the rule or pass --force"
            ]
        );
    }

    #[test]
    fn protect_overlap_rule_containing_protected() {
        let text = "protect = [\n  \"2001:db8:ffff::/48\",\n]\n".to_string()
            + &rule(
                "wide",
                "direction = \"src\"\naction = \"drop\"",
                "\"2001:db8:f000::/36\"",
            );
        let errors = problems(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains(
                "would drop traffic from 2001:db8:f000::/36, which overlaps protected prefix \
                 2001:db8:ffff::/48 (policy.toml:2)"
            ),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn protect_check_does_not_credit_pass_exceptions() {
        let text = "protect = [\"198.51.100.0/24\"]\n".to_string()
            + &rule("wide", "action = \"drop\"", "\"198.51.0.0/16\"")
            + &rule("hole", "action = \"pass\"", "\"198.51.100.0/24\"");
        let errors = problems(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].contains("rule \"wide\""), "{}", errors[0]);
    }

    #[test]
    fn protect_respects_allow_local_and_disjoint_prefixes() {
        let text = "protect = [\"198.51.100.0/24\"]\n".to_string()
            + &rule(
                "allowed",
                "action = \"drop\"\nallow_local = true",
                "\"198.51.0.0/16\"",
            )
            + &rule("next-door", "action = \"drop\"", "\"198.51.101.0/24\"");
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn errors_carry_structured_fields() {
        let p = policy(&rule("block-all", "action = \"drop\"", "\"192.0.2.10\""));
        let host = HostAddrs {
            local: vec![(ip("192.0.2.10"), "eth1".to_string())],
            gateways: Vec::new(),
        };
        let errors = check(&compile(&p), &host, &p.protect);
        match errors.as_slice() {
            [
                LockoutError::LocalAddress {
                    rule,
                    location,
                    action,
                    direction,
                    addr,
                    interface,
                    ..
                },
            ] => {
                assert_eq!(rule, "block-all");
                assert_eq!(location.line, 2);
                assert_eq!(*action, filter_common::action::DROP);
                assert_eq!(*direction, Direction::Dst);
                assert_eq!(*addr, ip("192.0.2.10"));
                assert_eq!(interface, "eth1");
            }
            other => panic!("expected one LocalAddress error, got {other:#?}"),
        }
    }

    const PROC_NET_ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wg0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
eth1\t00000000\t010011AC\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth1\t00000000\t0A0011AC\t0003\t0\t0\t200\t000000FF\t0\t0\t0
";

    // The kernel prints native-endian integers; the sample is what an x86 host prints.
    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_route_default_gateways() {
        let gateways = parse_proc_net_route(PROC_NET_ROUTE).unwrap_or_else(|e| panic!("{e}"));
        // Not the on-link route, not the default route without a gateway (wg0), not
        // 0.0.0.0/8 (mask 000000FF).
        let expected: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(172, 17, 0, 1)];
        assert_eq!(gateways, expected);
    }

    #[test]
    fn proc_net_route_empty_and_bad() {
        assert_eq!(parse_proc_net_route(""), Ok(Vec::new()));
        assert_eq!(
            parse_proc_net_route("Iface\tDestination\tGateway\neth0\t00000000\n"),
            Err(RouteParseError {
                file: "/proc/net/route",
                line: 2,
                text: "eth0\t00000000".to_string()
            })
        );
    }

    const PROC_NET_IPV6_ROUTE: &str = "\
20010db8000c00000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000c00000000000000000001 00000400 00000002 00000000 00000003     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
20010db8000100000000000000000000 30 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo
";

    #[test]
    fn proc_net_ipv6_route_default_gateways() {
        let gateways =
            parse_proc_net_ipv6_route(PROC_NET_IPV6_ROUTE).unwrap_or_else(|e| panic!("{e}"));
        // Not the unreachable default on lo (next hop ::), not the /48 via fe80::2.
        let expected: [Ipv6Addr; 2] = [
            "fe80::1".parse().unwrap_or_else(|e| panic!("{e}")),
            "2001:db8:c::1".parse().unwrap_or_else(|e| panic!("{e}")),
        ];
        assert_eq!(gateways, expected);
    }

    #[test]
    fn proc_net_ipv6_route_empty_and_bad() {
        assert_eq!(parse_proc_net_ipv6_route(""), Ok(Vec::new()));
        let short = "00000000000000000000000000000000 00 eth0";
        assert!(matches!(
            parse_proc_net_ipv6_route(short),
            Err(RouteParseError { line: 1, .. })
        ));
        let bad_hex = PROC_NET_IPV6_ROUTE.replacen("fe80", "zz80", 1);
        assert!(matches!(
            parse_proc_net_ipv6_route(&bad_hex),
            Err(RouteParseError { line: 2, .. })
        ));
    }

    /// getifaddrs needs no privileges, so this runs everywhere; it checks the unsafe walk
    /// returns sane data rather than what any particular host has.
    #[test]
    fn discover_runs_and_skips_loopback() {
        let host = HostAddrs::discover().unwrap_or_else(|e| panic!("discover: {e}"));
        for (addr, interface) in &host.local {
            assert!(
                !addr.is_loopback(),
                "{addr} on {interface} should be skipped"
            );
            assert!(!interface.is_empty(), "{addr} has no interface name");
        }
        for gateway in &host.gateways {
            assert!(!gateway.is_unspecified(), "{gateway}");
        }
    }
}
