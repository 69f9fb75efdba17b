//! Parse and validate the TOML policy file (format: `docs/policy.md`).
//!
//! Everything is checked before anything touches the kernel, and every problem is collected, so
//! one run shows the operator the whole list rather than one error per attempt. Each error names
//! the file and 1-based line it comes from and the offending value.
//!
//! # API
//!
//! - [`load`]`(path, now) -> Result<`[`Policy`]`, `[`PolicyErrors`]`>` reads the policy and its
//!   includes from disk; [`parse`]`(text, path, now, read_include)` does the same from memory (tests,
//!   fuzzing) with includes served by `read_include`.
//! - [`parse_prefix_list`]`(text, file)` imports one plain-text prefix list (FireHOL netsets,
//!   Spamhaus DROP/EDROP, one prefix or address per line, `#`/`;` comments).
//! - [`Policy`] holds the rules that will be loaded (expired rules are left out), the `protect`
//!   prefixes, the malformed-frame setting, the `[notice.NAME]` targets ([`NoticeTarget`]) that
//!   `redirect` rules ([`RuleNotice`]) send traffic to, the `reject` rate limit, and [`Note`]s
//!   (expired rules, prefixes listed twice in one rule, unused notice targets) that are worth
//!   showing but do not stop an apply.
//! - [`PolicyError`] is one problem; [`PolicyErrors`] is all of them, displayed one per line.
//!
//! Only TOML-level problems (syntax, unknown keys, wrong types) stop at the first: the TOML
//! parser cannot go on past them. Everything after that is validated by hand from
//! [`toml::Spanned`] strings, precisely so that every bad value gets its own error and line.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

// Duplicate detection hashes every prefix of lists that run to millions of lines: foldhash is
// several times faster than SipHash and, seeded per process, still resists lists crafted to
// collide (third-party feeds end up in `include`).
use foldhash::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use filter_common::{
    MAX_NOTICE_TARGETS, MAX_RULES, MAX_V4_PREFIXES, MAX_V6_PREFIXES, RULE_NAME_LEN,
};
use ipnet::IpNet;
use jiff::Timestamp;
use serde::Deserialize;
use toml::Spanned;

/// Where a value came from: a file and a 1-based line. Displays as `file:line`. The path is
/// shared: a million-line list gives a million locations, and one allocation each would be
/// most of the time it takes to read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", crate::escape::path(&self.file), self.line)
    }
}

/// Whether a rule decides what happens to the packets it matches, or only counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The default: the rule's action is carried out.
    #[default]
    Enforce,
    /// The rule never changes a verdict; what it would have done is counted and sampled
    /// (docs/policy.md, "Shadow mode").
    Shadow,
}

impl Mode {
    /// The [`filter_common::mode`] value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Enforce => filter_common::mode::ENFORCE,
            Self::Shadow => filter_common::mode::SHADOW,
        }
    }

    /// The spelling used in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which address of a packet a rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The destination address (the default: blocking traffic *to* something).
    #[default]
    Dst,
    /// The source address.
    Src,
}

impl Direction {
    /// The [`filter_common::direction`] value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Dst => filter_common::direction::DST,
            Self::Src => filter_common::direction::SRC,
        }
    }

    /// The inverse of [`Direction::as_u8`], for values read back from the kernel.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            filter_common::direction::DST => Some(Self::Dst),
            filter_common::direction::SRC => Some(Self::Src),
            _ => None,
        }
    }

    /// The spelling used in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dst => "dst",
            Self::Src => "src",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule does with a matching packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the packet through: an exception inside a wider block.
    Pass,
    /// Drop silently.
    Drop,
    /// Send the packet, unchanged at L3, to a notice server (see [`RuleNotice`]).
    Redirect,
    /// Answer TCP with a reset and other IP with an ICMP/ICMPv6 "administratively prohibited".
    Reject,
}

impl Action {
    /// The [`filter_common::action`] value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Pass => filter_common::action::PASS,
            Self::Drop => filter_common::action::DROP,
            Self::Redirect => filter_common::action::REDIRECT,
            Self::Reject => filter_common::action::REJECT,
        }
    }

    /// The spelling used in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Redirect => "redirect",
            Self::Reject => "reject",
        }
    }

    /// Anything but `pass`: what precedence and lockout protection treat as a block.
    pub const fn blocks(self) -> bool {
        !matches!(self, Self::Pass)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `redirect` rule does with HTTPS (TCP port 443): the notice server cannot show a page
/// under the blocked site's name without its certificate, so the rule chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HttpsMode {
    /// The default: the filter answers with a TCP reset, so the browser fails at once with a
    /// connection error instead of a certificate warning.
    #[default]
    Reject,
    /// Redirected like the rest; the notice server answers with its own certificate, which the
    /// browser shows as a certificate warning before the page.
    Notice,
}

impl HttpsMode {
    /// The spelling used in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Notice => "notice",
        }
    }
}

impl fmt::Display for HttpsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `[notice.NAME]` table: where `redirect` rules send their traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeTarget {
    pub name: String,
    /// Egress interface towards the notice server.
    pub interface: String,
    /// The L2-adjacent notice server, or the router in front of it; its MAC address is resolved
    /// from the kernel's neighbour table at apply time.
    pub next_hop: IpAddr,
    /// The line of the `[notice.NAME]` header.
    pub location: Location,
}

/// What a `redirect` rule tells its visitors, and where it sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleNotice {
    /// The name of the [`NoticeTarget`].
    pub target: String,
    /// The public statement shown on the page.
    pub text: Option<String>,
    /// A link to the full statement: an `http://` or `https://` URL.
    pub url: Option<String>,
    /// The HTTP status of the page: 451 (default) or 403.
    pub status: u16,
    pub https: HttpsMode,
}

/// Reply rate of `reject` per CPU, replies per second, when the policy does not say.
pub const DEFAULT_REJECT_RATE: u32 = 100;
/// Token-bucket size of `reject` per CPU when the policy does not say.
pub const DEFAULT_REJECT_BURST: u32 = 20;
/// Accepted `reject_rate` values.
pub const REJECT_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Accepted `reject_burst` values.
pub const REJECT_BURST_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;
/// The notice page's status when the rule does not say: RFC 7725 "Unavailable For Legal
/// Reasons".
pub const DEFAULT_NOTICE_STATUS: u16 = 451;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// What to do with frames that claim to be IP but cannot be parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MalformedAction {
    /// The default: a frame the filter cannot read is a frame it cannot vouch for, and letting
    /// it through would let a crafted header walk past every rule.
    #[default]
    Drop,
    Pass,
}

impl MalformedAction {
    /// The [`filter_common::malformed`] value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Drop => filter_common::malformed::DROP,
            Self::Pass => filter_common::malformed::PASS,
        }
    }

    /// The spelling used in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Pass => "pass",
        }
    }
}

impl fmt::Display for MalformedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated prefix (network address, no host bits) and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    pub net: IpNet,
    pub location: Location,
}

/// One rule that will be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub direction: Direction,
    pub action: Action,
    /// Shadow when the rule or the whole policy says `mode = "shadow"`.
    pub mode: Mode,
    /// Deduplicated, in the order written (inline `prefixes` first, then each include).
    pub prefixes: Vec<PrefixEntry>,
    pub comment: Option<String>,
    /// The case or ticket that grounds the rule (`reference = "CASE-123"`), for the audit trail.
    pub reference: Option<String>,
    /// Why the rule exists, in words, for the audit trail.
    pub reason: Option<String>,
    pub expires: Option<Timestamp>,
    pub allow_local: bool,
    /// Where and what a `redirect` rule shows; `Some` exactly for `redirect` rules.
    pub notice: Option<RuleNotice>,
    /// The line of the rule's `name`.
    pub location: Location,
}

/// A validated policy, ready for [`crate::compile::compile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub path: PathBuf,
    pub malformed: MalformedAction,
    pub protect: Vec<PrefixEntry>,
    /// Rules in file order, without the expired ones. The order is the rule id order.
    pub rules: Vec<Rule>,
    /// Every `[notice.NAME]` table, in file order, used or not.
    pub notices: Vec<NoticeTarget>,
    /// `reject` replies per second per CPU.
    pub reject_rate: u32,
    /// `reject` token-bucket size per CPU.
    pub reject_burst: u32,
    /// The top-level `mode`: `Shadow` puts every rule in shadow mode.
    pub mode: Mode,
    /// Every rule that blocks (drop, reject, redirect) must carry a `reference`.
    pub require_reference: bool,
    /// Distinct trusted keys that must have signed this policy before a host that checks
    /// signatures applies it (`signatures_required`, default 1).
    pub signatures_required: u32,
    pub notes: Vec<Note>,
}

/// Something worth telling the operator that does not stop the policy from loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The rule's `expires` is at or before the time the policy was parsed.
    Expired {
        location: Location,
        rule: String,
        expires: Timestamp,
    },
    /// The same prefix appears twice in one rule; it is loaded once.
    DuplicateInRule {
        rule: String,
        net: IpNet,
        first: Location,
        again: Location,
    },
    /// A `[notice.NAME]` table that no loaded rule refers to; it is not loaded.
    UnusedNotice { location: Location, notice: String },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired {
                location,
                rule,
                expires,
            } => write!(
                f,
                "{location}: rule {rule:?} expired at {expires}; not loaded"
            ),
            Self::DuplicateInRule {
                rule,
                net,
                first,
                again,
            } => write!(
                f,
                "{again}: rule {rule:?}: {net} is already listed at {first}; loaded once"
            ),
            Self::UnusedNotice { location, notice } => write!(
                f,
                "{location}: notice target {notice:?} is not used by any loaded rule; not loaded"
            ),
        }
    }
}

/// Why a string is not a usable prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixProblem {
    #[error("is not an IP address or CIDR prefix")]
    NotAnAddress,
    #[error("has an invalid prefix length {length:?}")]
    BadLength { length: String },
    #[error("has prefix length /{length}, but {family} prefixes are at most /{max}")]
    LengthOutOfRange {
        length: u32,
        family: &'static str,
        max: u8,
    },
    #[error("has host bits set; did you mean \"{suggestion}\"?")]
    HostBits { suggestion: IpNet },
}

/// A bad prefix as its error shows it.
///
/// A value written in the policy is quoted whole. A line of a list file is another matter: an
/// `include` may name any file edgeblock can read (`/etc/shadow` as root), so a line is quoted
/// only when it looks like an address: it starts with a valid IP address (its prefix length or
/// host bits are what is wrong), or it is made of digits, dots and slashes only (a mistyped
/// IPv4 prefix such as `192.0.2.300`); and then at most [`MAX_QUOTED`] characters of it,
/// escaped. Any other line is named by file:line and its length only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadValue {
    /// Displayed quoted and escaped (`{:?}`).
    Quoted(String),
    /// A list line that is not an address at all.
    Withheld { chars: usize },
}

impl BadValue {
    /// How a bad list line is shown: see [`BadValue`].
    fn list_line(line: &str, problem: &PrefixProblem) -> Self {
        let ipv4_like = line
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
        if *problem != PrefixProblem::NotAnAddress || ipv4_like {
            Self::Quoted(quote_limited(line))
        } else {
            Self::Withheld {
                chars: line.chars().count(),
            }
        }
    }
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quoted(value) => write!(f, "{value:?}"),
            Self::Withheld { chars } => write!(f, "a line of {chars} characters (not shown)"),
        }
    }
}

/// Which part of the configuration a bad prefix belongs to; displayed as a prefix of the error
/// message (`rule "x": `), empty for a list parsed on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixOwner {
    Rule {
        rule: String,
    },
    Protect,
    /// A list parsed by [`parse_prefix_list`] outside any policy.
    List,
    /// A list pulled in by a rule's `include`.
    Include {
        rule: String,
        included_at: Location,
    },
}

impl fmt::Display for PrefixOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule { rule } => write!(f, "rule {rule:?}: "),
            Self::Protect => f.write_str("protect: "),
            Self::List => Ok(()),
            Self::Include { rule, included_at } => {
                write!(f, "rule {rule:?} (included at {included_at}): ")
            }
        }
    }
}

/// Why a rule name is refused. Names end up in a fixed 64-byte kernel map slot and on command
/// lines, hence the short, shell-safe alphabet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains {ch:?}; use only letters, digits, '.', '_' and '-'")]
    BadChar { ch: char },
}

/// Why an interface name is refused: the checks of the kernel's `dev_valid_name`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; Linux interface names are at most {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "contains {ch:?}; interface names cannot contain '/', ':', whitespace or control characters"
    )]
    BadChar { ch: char },
    #[error("is not an interface name")]
    Reserved,
}

/// Why a `next_hop` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NextHopProblem {
    #[error("is not an IPv4 or IPv6 address")]
    NotAnAddress,
    #[error("is {kind}; the next hop must be a neighbour's unicast address")]
    NotUnicast { kind: &'static str },
}

/// Why a `notice_url` is refused. The URL ends up in an `href` on a public page, so only plain
/// web links are taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("is not an http:// or https:// URL")]
    NotHttp,
    #[error("has no host name")]
    NoHost,
    #[error("contains {ch:?}; percent-encode it")]
    BadChar { ch: char },
    #[error("contains user information before '@'; link to the statement directly")]
    UserInfo,
    #[error("has an invalid port {port:?}")]
    BadPort { port: String },
}

/// The `[notice.NAME]` tables a policy defines, for "did you mean" lists in errors.
/// Why a `reference` is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains {ch:?}; a reference is one line of printable text")]
    BadChar { ch: char },
}

/// Longest `reference`: a ticket id or two, not an essay (that is what `reason` is for).
pub const MAX_REFERENCE_LEN: usize = 128;
/// Most signatures a policy may require.
pub const MAX_SIGNATURES_REQUIRED: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownNotices(pub Vec<String>);

impl fmt::Display for KnownNotices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the policy defines no [notice.NAME] table");
        }
        f.write_str("defined: ")?;
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }
}

/// One problem in a policy or prefix list.
///
/// Causes (`io::Error`, `jiff::Error`) are part of the message rather than `source()`, because
/// these errors are shown one per line in a list where a cause chain would be lost.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy file: {error}", crate::escape::path(file))]
    Read { file: PathBuf, error: io::Error },

    /// TOML syntax, unknown keys, missing keys and wrong types, as reported by the TOML parser.
    #[error("{location}: {message}")]
    Toml { location: Location, message: String },

    #[error("{location}: {owner}{value} {problem}")]
    BadPrefix {
        location: Location,
        owner: PrefixOwner,
        value: BadValue,
        problem: PrefixProblem,
    },

    /// A list file with so many bad lines that it is probably not a list at all (an HTML error
    /// page saved by a failed download, say); the first [`MAX_LIST_ERRORS`] are reported.
    #[error("{}: {count} more bad lines not shown", crate::escape::path(file))]
    MoreBadLines { file: PathBuf, count: usize },

    #[error(
        "{second}: rule {second_rule:?}: {net} is already in rule {first_rule:?} at {first}; \
         a prefix can belong to only one {direction} rule"
    )]
    DuplicatePrefix {
        net: IpNet,
        direction: Direction,
        first: Location,
        first_rule: String,
        second: Location,
        second_rule: String,
    },

    #[error("{second}: rule name {name:?} is already used at {first}")]
    DuplicateRuleName {
        name: String,
        first: Location,
        second: Location,
    },

    #[error("{location}: rule name {name:?} {problem}")]
    BadRuleName {
        location: Location,
        name: String,
        problem: NameProblem,
    },

    #[error("{location}: rule {rule:?} has no prefixes; list some in `prefixes` or `include`")]
    EmptyRule { location: Location, rule: String },

    #[error(
        "{location}: rule {rule:?}: cannot read include {include:?} ({}): {error}",
        crate::escape::path(resolved)
    )]
    UnreadableInclude {
        location: Location,
        rule: String,
        /// As written in the policy.
        include: String,
        /// Relative to the policy file's directory.
        resolved: PathBuf,
        error: io::Error,
    },

    #[error(
        "{location}: rule {rule:?}: expires {value:?} is not an RFC 3339 timestamp with an \
         offset, like \"2026-12-31T00:00:00Z\": {error}"
    )]
    BadExpires {
        location: Location,
        rule: String,
        value: String,
        error: jiff::Error,
    },

    #[error(
        "{location}: rule {rule:?}: expires must be a timestamp like \"2026-12-31T00:00:00Z\", \
         not a TOML {found}"
    )]
    ExpiresType {
        location: Location,
        rule: String,
        found: &'static str,
    },

    #[error(
        "{location}: rule {rule:?}: unknown action {value:?}; expected \"pass\", \"drop\", \
         \"redirect\" or \"reject\""
    )]
    UnknownAction {
        location: Location,
        rule: String,
        value: String,
    },

    #[error("{location}: rule {rule:?}: unknown direction {value:?}; expected \"dst\" or \"src\"")]
    BadDirection {
        location: Location,
        rule: String,
        value: String,
    },

    #[error("{location}: malformed = {value:?} is not valid; expected \"drop\" or \"pass\"")]
    BadMalformed { location: Location, value: String },

    #[error("{location}: {}mode = {value:?} is not valid; expected \"enforce\" or \"shadow\"", rule.as_ref().map(|r| format!("rule {r:?}: ")).unwrap_or_default())]
    BadMode {
        location: Location,
        /// `None` for the top-level key.
        rule: Option<String>,
        value: String,
    },

    #[error(
        "{location}: {key} = {value} is out of range; expected {} to {}",
        range.start(),
        range.end()
    )]
    BadRejectLimit {
        location: Location,
        key: &'static str,
        value: i64,
        range: std::ops::RangeInclusive<u32>,
    },

    #[error("{location}: notice target name {name:?} {problem}")]
    BadNoticeName {
        location: Location,
        name: String,
        problem: NameProblem,
    },

    #[error("{location}: notice target {notice:?}: interface {value:?} {problem}")]
    BadInterface {
        location: Location,
        notice: String,
        value: String,
        problem: InterfaceProblem,
    },

    #[error("{location}: notice target {notice:?}: next_hop {value:?} {problem}")]
    BadNextHop {
        location: Location,
        notice: String,
        value: String,
        problem: NextHopProblem,
    },

    #[error(
        "{location}: rule {rule:?}: action \"redirect\" needs notice = \"NAME\", naming a \
         [notice.NAME] table; {known}"
    )]
    RedirectWithoutNotice {
        location: Location,
        rule: String,
        known: KnownNotices,
    },

    #[error(
        "{location}: rule {rule:?}: action \"redirect\" matches destinations only (the notice \
         page is chosen by the address the visitor wanted); use direction = \"dst\", or \
         action = \"reject\" or \"drop\" for a source"
    )]
    RedirectFromSource { location: Location, rule: String },

    #[error("{location}: rule {rule:?}: notice {value:?} is not defined; {known}")]
    UnknownNotice {
        location: Location,
        rule: String,
        value: String,
        known: KnownNotices,
    },

    #[error(
        "{location}: rule {rule:?}: {key} only applies to action = \"redirect\", not \
         \"{action}\"; remove it or change the action"
    )]
    NoticeKeyWithoutRedirect {
        location: Location,
        rule: String,
        key: &'static str,
        action: Action,
    },

    #[error(
        "{location}: rule {rule:?}: notice_status = {value} is not valid; expected 451 (the \
         default) or 403"
    )]
    BadNoticeStatus {
        location: Location,
        rule: String,
        value: i64,
    },

    #[error(
        "{location}: rule {rule:?}: https = {value:?} is not valid; expected \"reject\" (the \
         default) or \"notice\""
    )]
    BadHttps {
        location: Location,
        rule: String,
        value: String,
    },

    #[error("{location}: rule {rule:?}: notice_url {value:?} {problem}")]
    BadNoticeUrl {
        location: Location,
        rule: String,
        value: String,
        problem: UrlProblem,
    },

    #[error("{location}: rule {rule:?}: reference {value:?} {problem}")]
    BadReference {
        location: Location,
        rule: String,
        value: String,
        problem: ReferenceProblem,
    },

    #[error(
        "{location}: rule {rule:?} ({action}) has no reference, and the policy says \
         require_reference = true; add reference = \"CASE-ID\" naming the case or ticket"
    )]
    MissingReference {
        location: Location,
        rule: String,
        action: Action,
    },

    #[error(
        "{location}: signatures_required = {value} is out of range; expected 1 to \
         {MAX_SIGNATURES_REQUIRED}"
    )]
    BadSignaturesRequired { location: Location, value: i64 },

    #[error("{location}: rule {rule:?} is one rule too many; at most {max} rules can be loaded")]
    TooManyRules {
        location: Location,
        rule: String,
        max: u32,
    },

    #[error(
        "{location}: notice target {notice:?} is one too many; rules can use at most {max} \
         notice targets"
    )]
    TooManyNoticeTargets {
        location: Location,
        notice: String,
        max: u32,
    },

    #[error(
        "{}: the {direction} {family} table would hold {count} prefixes; it holds at most {max}",
        crate::escape::path(file)
    )]
    TooManyPrefixes {
        file: PathBuf,
        direction: Direction,
        family: &'static str,
        count: usize,
        max: u32,
    },
}

/// Every problem found in a policy. Displays one error per line.
#[derive(Debug)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Bad lines reported per list file before the rest are summarised by
/// [`PolicyError::MoreBadLines`].
pub const MAX_LIST_ERRORS: usize = 20;

/// Longest list line quoted back in an error: the longest prefix there is
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128`). Also keeps a list that is really a
/// minified JSON or HTML page from putting megabytes on the terminal.
pub const MAX_QUOTED: usize = 49;

/// Read the policy at `path` and the lists it includes (relative to its directory), and
/// validate everything. Rules whose `expires` is at or before `now` are left out.
pub fn load(path: &Path, now: Timestamp) -> Result<Policy, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        PolicyErrors(vec![PolicyError::Read {
            file: path.to_path_buf(),
            error,
        }])
    })?;
    parse(&text, path, now, |p| std::fs::read_to_string(p))
}

/// Validate policy `text` as if read from `path`. `read_include` is called with each include
/// path joined to `path`'s directory.
pub fn parse(
    text: &str,
    path: &Path,
    now: Timestamp,
    read_include: impl Fn(&Path) -> io::Result<String>,
) -> Result<Policy, PolicyErrors> {
    let lines = LineIndex::new(text);
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        PolicyErrors(vec![PolicyError::Toml {
            location: Location {
                file: Arc::from(path),
                line: lines.line(e.span().map_or(0, |s| s.start)),
            },
            // The parser's message is meant to sit under its own multi-line snippet; keep it
            // on one line so the list stays one error per line.
            message: e.message().trim().replace('\n', "; "),
        }])
    })?;

    let mut v = Validator {
        path,
        lines,
        errors: Vec::new(),
        notes: Vec::new(),
    };

    let malformed = match &raw.malformed {
        None => MalformedAction::default(),
        Some(value) => match value.get_ref().as_str() {
            "drop" => MalformedAction::Drop,
            "pass" => MalformedAction::Pass,
            other => {
                let location = v.at(value);
                v.errors.push(PolicyError::BadMalformed {
                    location,
                    value: other.to_string(),
                });
                MalformedAction::default()
            }
        },
    };

    let mode = v.mode(raw.mode.as_ref(), None).unwrap_or_default();
    let reject_rate = v.reject_limit(
        "reject_rate",
        raw.reject_rate.as_ref(),
        DEFAULT_REJECT_RATE,
        REJECT_RATE_RANGE,
    );
    let reject_burst = v.reject_limit(
        "reject_burst",
        raw.reject_burst.as_ref(),
        DEFAULT_REJECT_BURST,
        REJECT_BURST_RANGE,
    );
    let signatures_required = match &raw.signatures_required {
        None => 1,
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(n) if (1..=MAX_SIGNATURES_REQUIRED).contains(&n) => n,
            _ => {
                let location = v.at(value);
                v.errors.push(PolicyError::BadSignaturesRequired {
                    location,
                    value: *value.get_ref(),
                });
                1
            }
        },
    };
    let protect = v.protect(&raw.protect);
    let (notices, known) = v.notices(&raw.notice);
    let base = path.parent().unwrap_or(Path::new(""));
    let candidates: Vec<Candidate> = raw
        .rule
        .iter()
        .map(|r| v.rule(r, now, base, &read_include, &known, raw.require_reference))
        .collect();

    v.check_names(&candidates);
    v.check_across_rules(&candidates);
    v.check_notice_use(&notices, &candidates);

    if !v.errors.is_empty() {
        return Err(PolicyErrors(v.errors));
    }
    let rules = candidates
        .into_iter()
        .filter(|c| !c.expired)
        .filter_map(Candidate::into_rule)
        .map(|mut rule| {
            if mode == Mode::Shadow {
                rule.mode = Mode::Shadow;
            }
            rule
        })
        .collect();
    Ok(Policy {
        path: path.to_path_buf(),
        malformed,
        protect,
        rules,
        notices,
        reject_rate,
        reject_burst,
        mode,
        require_reference: raw.require_reference,
        signatures_required,
        notes: v.notes,
    })
}

/// Parse a plain-text prefix list: one prefix or bare address per line; `#` and `;` start a
/// comment (whole-line or trailing); blank lines are ignored and whitespace is trimmed. Lines
/// are numbered from 1 in `file`. Duplicates are kept: deduplication belongs to the rule.
pub fn parse_prefix_list(text: &str, file: &Path) -> Result<Vec<PrefixEntry>, Vec<PolicyError>> {
    // Files saved by some Windows tools start with a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut not_shown = 0;
    let file: Arc<Path> = Arc::from(file);
    for (index, line) in text.lines().enumerate() {
        let content = line
            .find(['#', ';'])
            .map_or(line, |end| &line[..end])
            .trim();
        if content.is_empty() {
            continue;
        }
        let location = Location {
            file: Arc::clone(&file),
            line: index + 1,
        };
        match parse_prefix(content) {
            Ok(net) => entries.push(PrefixEntry { net, location }),
            Err(_) if errors.len() >= MAX_LIST_ERRORS => not_shown += 1,
            Err(problem) => errors.push(PolicyError::BadPrefix {
                location,
                owner: PrefixOwner::List,
                value: BadValue::list_line(content, &problem),
                problem,
            }),
        }
    }
    if not_shown > 0 {
        errors.push(PolicyError::MoreBadLines {
            file: file.to_path_buf(),
            count: not_shown,
        });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Parse `addr/len` or a bare address (a /32 or /128). Host bits are an error rather than
/// silently truncated: `10.0.0.1/8` is far more often a typo for `10.0.0.1/32` or a
/// misunderstanding than a deliberate way to write `10.0.0.0/8`, and the two block very
/// different amounts of traffic.
pub fn parse_prefix(text: &str) -> Result<IpNet, PrefixProblem> {
    let (addr, length) = match text.split_once('/') {
        Some((addr, length)) => (addr, Some(length)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| PrefixProblem::NotAnAddress)?;
    let (family, max) = match addr {
        IpAddr::V4(_) => ("IPv4", 32),
        IpAddr::V6(_) => ("IPv6", 128),
    };
    let length = match length {
        None => max,
        Some(length) => {
            // `u32::from_str` would also take "+8".
            let bad = || PrefixProblem::BadLength {
                length: quote_limited_to(length, MAX_LENGTH_QUOTED),
            };
            if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: u32 = length.parse().map_err(|_| bad())?;
            match u8::try_from(n) {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(PrefixProblem::LengthOutOfRange {
                        length: n,
                        family,
                        max,
                    });
                }
            }
        }
    };
    let net = IpNet::new(addr, length).map_err(|_| PrefixProblem::LengthOutOfRange {
        length: u32::from(length),
        family,
        max,
    })?;
    let network = net.trunc();
    if network != net {
        return Err(PrefixProblem::HostBits {
            suggestion: network,
        });
    }
    Ok(net)
}

/// Longest invalid prefix length quoted back (`/abc`): lengths have at most three digits.
const MAX_LENGTH_QUOTED: usize = 8;

fn quote_limited(text: &str) -> String {
    quote_limited_to(text, MAX_QUOTED)
}

fn quote_limited_to(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
/// Control characters are refused too: a NUL would cut the name short on its way to the kernel.
pub fn check_interface_name(name: &str) -> Result<(), InterfaceProblem> {
    if name.is_empty() {
        return Err(InterfaceProblem::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(InterfaceProblem::BadChar { ch });
    }
    if name.len() > IFNAME_MAX {
        return Err(InterfaceProblem::TooLong {
            len: name.len(),
            max: IFNAME_MAX,
        });
    }
    if name == "." || name == ".." {
        return Err(InterfaceProblem::Reserved);
    }
    Ok(())
}

/// A next hop is a neighbour: a unicast address that can have an entry in the neighbour table.
pub fn parse_next_hop(text: &str) -> Result<IpAddr, NextHopProblem> {
    let addr: IpAddr = text.parse().map_err(|_| NextHopProblem::NotAnAddress)?;
    let kind = match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        _ => None,
    };
    match kind {
        Some(kind) => Err(NextHopProblem::NotUnicast { kind }),
        None => Ok(addr),
    }
}

/// A plain web link: `http://` or `https://` (any case), a host, an optional numeric port, no
/// user information, and no character that would have to be percent-encoded. Deliberately
/// narrow: the URL is printed on a public page as a link, so anything else (`javascript:`,
/// `data:`, a `user@host` that disguises the real host) is refused rather than interpreted.
pub fn check_notice_url(url: &str) -> Result<(), UrlProblem> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(UrlProblem::NotHttp);
    };
    if let Some(ch) = url.chars().find(|&c| {
        c.is_whitespace()
            || c.is_control()
            || !c.is_ascii()
            || matches!(c, '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}')
    }) {
        return Err(UrlProblem::BadChar { ch });
    }
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    if authority.contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    // An IPv6 literal is bracketed and holds colons of its own.
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(UrlProblem::NoHost);
                }
                match after {
                    "" => (v6, None),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (v6, Some(port)),
                        None => return Err(UrlProblem::NoHost),
                    },
                }
            }
            None => return Err(UrlProblem::NoHost),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.starts_with('.') || host.contains("..") {
        return Err(UrlProblem::NoHost);
    }
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err(UrlProblem::BadPort {
            port: port.to_string(),
        });
    }
    Ok(())
}

/// A reference is shown in the audit log and on terminals: one line of printable text.
fn check_reference(reference: &str) -> Result<(), ReferenceProblem> {
    if reference.trim().is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    if let Some(ch) = reference.chars().find(|c| c.is_control()) {
        return Err(ReferenceProblem::BadChar { ch });
    }
    let len = reference.chars().count();
    if len > MAX_REFERENCE_LEN {
        return Err(ReferenceProblem::TooLong {
            len,
            max: MAX_REFERENCE_LEN,
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameProblem::BadChar { ch });
    }
    if name.len() > RULE_NAME_LEN {
        return Err(NameProblem::TooLong {
            len: name.len(),
            max: RULE_NAME_LEN,
        });
    }
    Ok(())
}

// The file as TOML sees it. Every value that needs a line number in an error is `Spanned`, and
// every enumerated value is a plain string checked by hand, so one bad value does not hide the
// others behind serde's first error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    malformed: Option<Spanned<String>>,
    #[serde(default)]
    protect: Vec<Spanned<String>>,
    reject_rate: Option<Spanned<i64>>,
    reject_burst: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    require_reference: bool,
    signatures_required: Option<Spanned<i64>>,
    // Spanned keys: the map is sorted by name, the spans give back the file order and lines.
    #[serde(default)]
    notice: BTreeMap<Spanned<String>, RawNotice>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotice {
    interface: Spanned<String>,
    next_hop: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    direction: Option<Spanned<String>>,
    action: Spanned<String>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    prefixes: Vec<Spanned<String>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    comment: Option<String>,
    reference: Option<Spanned<String>>,
    reason: Option<String>,
    // A `Value` so both `"2026-12-31T00:00:00Z"` and the bare TOML datetime are accepted.
    expires: Option<Spanned<toml::Value>>,
    #[serde(default)]
    allow_local: bool,
    notice: Option<Spanned<String>>,
    notice_text: Option<Spanned<String>>,
    notice_url: Option<Spanned<String>>,
    notice_status: Option<Spanned<i64>>,
    https: Option<Spanned<String>>,
}

/// A rule as far as it could be validated; fields that failed are `None` and have an error.
struct Candidate {
    name: String,
    location: Location,
    direction: Option<Direction>,
    action: Option<Action>,
    mode: Option<Mode>,
    prefixes: Vec<PrefixEntry>,
    comment: Option<String>,
    reference: Option<String>,
    reason: Option<String>,
    expires: Option<Timestamp>,
    expired: bool,
    allow_local: bool,
    notice: Option<RuleNotice>,
}

impl Candidate {
    fn into_rule(self) -> Option<Rule> {
        let action = self.action?;
        // Validation reports a redirect without a usable notice, so this only guards the
        // invariant that `notice` is `Some` exactly for redirect rules.
        if (action == Action::Redirect) != self.notice.is_some() {
            return None;
        }
        Some(Rule {
            name: self.name,
            direction: self.direction?,
            action,
            mode: self.mode?,
            prefixes: self.prefixes,
            comment: self.comment,
            reference: self.reference,
            reason: self.reason,
            expires: self.expires,
            allow_local: self.allow_local,
            notice: self.notice,
            location: self.location,
        })
    }
}

/// Every repeated key, as (its position, the position of its first occurrence), in the
/// order of position. Sorting finds them without hashing a million prefixes.
fn repeated<K: Ord + Copy>(keys: impl Iterator<Item = K>) -> Vec<(usize, usize)> {
    let mut sorted: Vec<(K, usize)> = keys.enumerate().map(|(i, k)| (k, i)).collect();
    sorted.sort_unstable();
    let mut out: Vec<(usize, usize)> = sorted
        .chunk_by(|a, b| a.0 == b.0)
        .flat_map(|run| run[1..].iter().map(|&(_, again)| (again, run[0].1)))
        .collect();
    out.sort_unstable();
    out
}

/// Byte offset -> 1-based line, by binary search over line starts.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

struct Validator<'a> {
    path: &'a Path,
    lines: LineIndex,
    errors: Vec<PolicyError>,
    notes: Vec<Note>,
}

impl Validator<'_> {
    fn at<T>(&self, value: &Spanned<T>) -> Location {
        self.at_offset(value.span().start)
    }

    fn at_offset(&self, offset: usize) -> Location {
        Location {
            file: Arc::from(self.path),
            line: self.lines.line(offset),
        }
    }

    fn protect(&mut self, raw: &[Spanned<String>]) -> Vec<PrefixEntry> {
        let mut protect: Vec<PrefixEntry> = Vec::new();
        for value in raw {
            let location = self.at(value);
            match parse_prefix(value.get_ref()) {
                // Listing a protected prefix twice is harmless, so it is neither an error
                // nor worth a note.
                Ok(net) if protect.iter().any(|p| p.net == net) => {}
                Ok(net) => protect.push(PrefixEntry { net, location }),
                Err(problem) => self.errors.push(PolicyError::BadPrefix {
                    location,
                    owner: PrefixOwner::Protect,
                    value: BadValue::Quoted(value.get_ref().clone()),
                    problem,
                }),
            }
        }
        protect
    }

    fn rule(
        &mut self,
        raw: &RawRule,
        now: Timestamp,
        base: &Path,
        read_include: &impl Fn(&Path) -> io::Result<String>,
        known: &KnownNotices,
        require_reference: bool,
    ) -> Candidate {
        let name = raw.name.get_ref().clone();
        let location = self.at(&raw.name);
        if let Err(problem) = check_name(&name) {
            self.errors.push(PolicyError::BadRuleName {
                location: location.clone(),
                name: name.clone(),
                problem,
            });
        }

        let direction = match &raw.direction {
            None => Some(Direction::default()),
            Some(value) => match value.get_ref().as_str() {
                "dst" => Some(Direction::Dst),
                "src" => Some(Direction::Src),
                other => {
                    self.errors.push(PolicyError::BadDirection {
                        location: self.at(value),
                        rule: name.clone(),
                        value: other.to_string(),
                    });
                    None
                }
            },
        };

        let action = match raw.action.get_ref().as_str() {
            "pass" => Some(Action::Pass),
            "drop" => Some(Action::Drop),
            "redirect" => Some(Action::Redirect),
            "reject" => Some(Action::Reject),
            other => {
                self.errors.push(PolicyError::UnknownAction {
                    location: self.at(&raw.action),
                    rule: name.clone(),
                    value: other.to_string(),
                });
                None
            }
        };
        let mode = self.mode(raw.mode.as_ref(), Some(&name));
        let notice = self.rule_notice(raw, &name, action, known);
        // The notice server picks the page by the packet's destination, and redirecting a
        // source's traffic would send it to a server with no page for where it was going.
        if action == Some(Action::Redirect)
            && direction == Some(Direction::Src)
            && let Some(value) = &raw.direction
        {
            self.errors.push(PolicyError::RedirectFromSource {
                location: self.at(value),
                rule: name.clone(),
            });
        }

        let reference =
            raw.reference
                .as_ref()
                .and_then(|value| match check_reference(value.get_ref()) {
                    Ok(()) => Some(value.get_ref().clone()),
                    Err(problem) => {
                        self.errors.push(PolicyError::BadReference {
                            location: self.at(value),
                            rule: name.clone(),
                            value: quote_limited(value.get_ref()),
                            problem,
                        });
                        None
                    }
                });
        if require_reference
            && raw.reference.is_none()
            && let Some(action) = action
            && action != Action::Pass
        {
            self.errors.push(PolicyError::MissingReference {
                location: location.clone(),
                rule: name.clone(),
                action,
            });
        }

        let expires = raw.expires.as_ref().and_then(|value| {
            let location = self.at(value);
            let text = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Datetime(d) => d.to_string(),
                other => {
                    self.errors.push(PolicyError::ExpiresType {
                        location,
                        rule: name.clone(),
                        found: other.type_str(),
                    });
                    return None;
                }
            };
            match text.parse::<Timestamp>() {
                Ok(t) => Some((t, location)),
                Err(error) => {
                    self.errors.push(PolicyError::BadExpires {
                        location,
                        rule: name.clone(),
                        value: text,
                        error,
                    });
                    None
                }
            }
        });
        let expired = match &expires {
            Some((t, location)) if *t <= now => {
                self.notes.push(Note::Expired {
                    location: location.clone(),
                    rule: name.clone(),
                    expires: *t,
                });
                true
            }
            _ => false,
        };

        // Everything that was written as a prefix, good or bad, so that a rule whose only
        // prefixes are bad gets those errors and not also "has no prefixes".
        let mut written = 0;
        let mut unreadable = false;
        let mut entries = Vec::new();
        for value in &raw.prefixes {
            written += 1;
            let location = self.at(value);
            match parse_prefix(value.get_ref()) {
                Ok(net) => entries.push(PrefixEntry { net, location }),
                Err(problem) => self.errors.push(PolicyError::BadPrefix {
                    location,
                    owner: PrefixOwner::Rule { rule: name.clone() },
                    value: BadValue::Quoted(value.get_ref().clone()),
                    problem,
                }),
            }
        }
        for include in &raw.include {
            let included_at = self.at(include);
            let resolved = base.join(include.get_ref());
            let text = match read_include(&resolved) {
                Ok(text) => text,
                Err(error) => {
                    unreadable = true;
                    self.errors.push(PolicyError::UnreadableInclude {
                        location: included_at,
                        rule: name.clone(),
                        include: include.get_ref().clone(),
                        resolved,
                        error,
                    });
                    continue;
                }
            };
            match parse_prefix_list(&text, &resolved) {
                Ok(list) => {
                    written += list.len();
                    entries.extend(list);
                }
                Err(errors) => {
                    written += errors.len();
                    self.errors.extend(errors.into_iter().map(|mut e| {
                        if let PolicyError::BadPrefix { owner, .. } = &mut e {
                            *owner = PrefixOwner::Include {
                                rule: name.clone(),
                                included_at: included_at.clone(),
                            };
                        }
                        e
                    }));
                }
            }
        }
        if written == 0 && !unreadable {
            self.errors.push(PolicyError::EmptyRule {
                location: location.clone(),
                rule: name.clone(),
            });
        }

        let mut keep = vec![true; entries.len()];
        for (again, first) in repeated(entries.iter().map(|e| e.net)) {
            keep[again] = false;
            self.notes.push(Note::DuplicateInRule {
                rule: name.clone(),
                net: entries[again].net,
                first: entries[first].location.clone(),
                again: entries[again].location.clone(),
            });
        }
        let prefixes: Vec<PrefixEntry> = entries
            .into_iter()
            .zip(keep)
            .filter_map(|(entry, keep)| keep.then_some(entry))
            .collect();

        Candidate {
            name,
            location,
            direction,
            action,
            mode,
            prefixes,
            comment: raw.comment.clone(),
            reference,
            reason: raw.reason.clone(),
            expires: expires.map(|(t, _)| t),
            expired,
            allow_local: raw.allow_local,
            notice,
        }
    }

    /// The notice keys of one rule. With an unknown action (already an error) they are not
    /// checked at all, since whether they belong depends on the action that was meant.
    fn rule_notice(
        &mut self,
        raw: &RawRule,
        rule: &str,
        action: Option<Action>,
        known: &KnownNotices,
    ) -> Option<RuleNotice> {
        let action = action?;
        if action != Action::Redirect {
            let keys = [
                ("notice", raw.notice.as_ref().map(|v| v.span())),
                ("notice_text", raw.notice_text.as_ref().map(|v| v.span())),
                ("notice_url", raw.notice_url.as_ref().map(|v| v.span())),
                (
                    "notice_status",
                    raw.notice_status.as_ref().map(|v| v.span()),
                ),
                ("https", raw.https.as_ref().map(|v| v.span())),
            ];
            for (key, span) in keys {
                if let Some(span) = span {
                    self.errors.push(PolicyError::NoticeKeyWithoutRedirect {
                        location: self.at_offset(span.start),
                        rule: rule.to_string(),
                        key,
                        action,
                    });
                }
            }
            return None;
        }

        let target = match &raw.notice {
            None => {
                self.errors.push(PolicyError::RedirectWithoutNotice {
                    location: self.at(&raw.action),
                    rule: rule.to_string(),
                    known: known.clone(),
                });
                None
            }
            Some(value) if !known.0.contains(value.get_ref()) => {
                self.errors.push(PolicyError::UnknownNotice {
                    location: self.at(value),
                    rule: rule.to_string(),
                    value: value.get_ref().clone(),
                    known: known.clone(),
                });
                None
            }
            Some(value) => Some(value.get_ref().clone()),
        };

        let status = match &raw.notice_status {
            None => Some(DEFAULT_NOTICE_STATUS),
            Some(value) => match *value.get_ref() {
                403 => Some(403),
                451 => Some(451),
                other => {
                    self.errors.push(PolicyError::BadNoticeStatus {
                        location: self.at(value),
                        rule: rule.to_string(),
                        value: other,
                    });
                    None
                }
            },
        };

        let https = match &raw.https {
            None => Some(HttpsMode::default()),
            Some(value) => match value.get_ref().as_str() {
                "reject" => Some(HttpsMode::Reject),
                "notice" => Some(HttpsMode::Notice),
                other => {
                    self.errors.push(PolicyError::BadHttps {
                        location: self.at(value),
                        rule: rule.to_string(),
                        value: other.to_string(),
                    });
                    None
                }
            },
        };

        let url = match &raw.notice_url {
            None => Some(None),
            Some(value) => match check_notice_url(value.get_ref()) {
                Ok(()) => Some(Some(value.get_ref().clone())),
                Err(problem) => {
                    self.errors.push(PolicyError::BadNoticeUrl {
                        location: self.at(value),
                        rule: rule.to_string(),
                        value: quote_limited(value.get_ref()),
                        problem,
                    });
                    None
                }
            },
        };

        Some(RuleNotice {
            target: target?,
            text: raw.notice_text.as_ref().map(|t| t.get_ref().clone()),
            url: url?,
            status: status?,
            https: https?,
        })
    }

    /// A `mode` value, top-level (`rule` = `None`) or a rule's; `None` after an error.
    fn mode(&mut self, raw: Option<&Spanned<String>>, rule: Option<&str>) -> Option<Mode> {
        let Some(value) = raw else {
            return Some(Mode::default());
        };
        match value.get_ref().as_str() {
            "enforce" => Some(Mode::Enforce),
            "shadow" => Some(Mode::Shadow),
            other => {
                self.errors.push(PolicyError::BadMode {
                    location: self.at(value),
                    rule: rule.map(str::to_owned),
                    value: other.to_string(),
                });
                None
            }
        }
    }

    fn reject_limit(
        &mut self,
        key: &'static str,
        raw: Option<&Spanned<i64>>,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> u32 {
        let Some(value) = raw else {
            return default;
        };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.errors.push(PolicyError::BadRejectLimit {
                    location: self.at(value),
                    key,
                    value: *value.get_ref(),
                    range,
                });
                default
            }
        }
    }

    /// The `[notice.NAME]` tables that validate, in file order, and the names of all of them:
    /// a rule that names a target whose `interface` is wrong gets that error only, not also
    /// "not defined".
    fn notices(
        &mut self,
        raw: &BTreeMap<Spanned<String>, RawNotice>,
    ) -> (Vec<NoticeTarget>, KnownNotices) {
        let mut in_file_order: Vec<(&Spanned<String>, &RawNotice)> = raw.iter().collect();
        in_file_order.sort_by_key(|(name, _)| name.span().start);
        let known = KnownNotices(
            in_file_order
                .iter()
                .map(|(name, _)| name.get_ref().clone())
                .collect(),
        );
        let mut targets = Vec::new();
        for (name_value, notice) in in_file_order {
            let name = name_value.get_ref().clone();
            let location = self.at(name_value);
            let mut ok = true;
            if let Err(problem) = check_name(&name) {
                ok = false;
                self.errors.push(PolicyError::BadNoticeName {
                    location: location.clone(),
                    name: name.clone(),
                    problem,
                });
            }
            if let Err(problem) = check_interface_name(notice.interface.get_ref()) {
                ok = false;
                self.errors.push(PolicyError::BadInterface {
                    location: self.at(&notice.interface),
                    notice: name.clone(),
                    value: quote_limited(notice.interface.get_ref()),
                    problem,
                });
            }
            let next_hop = match parse_next_hop(notice.next_hop.get_ref()) {
                Ok(addr) => Some(addr),
                Err(problem) => {
                    self.errors.push(PolicyError::BadNextHop {
                        location: self.at(&notice.next_hop),
                        notice: name.clone(),
                        value: quote_limited(notice.next_hop.get_ref()),
                        problem,
                    });
                    None
                }
            };
            if let (true, Some(next_hop)) = (ok, next_hop) {
                targets.push(NoticeTarget {
                    name,
                    interface: notice.interface.get_ref().clone(),
                    next_hop,
                    location,
                });
            }
        }
        (targets, known)
    }

    /// A target no loaded rule refers to is worth a note: usually a rule was removed or has
    /// expired, or names another target by mistake. The targets that are used must fit the
    /// kernel's notice table.
    fn check_notice_use(&mut self, notices: &[NoticeTarget], candidates: &[Candidate]) {
        let mut used = 0;
        for target in notices {
            let is_used = candidates
                .iter()
                .filter(|c| !c.expired)
                .filter_map(|c| c.notice.as_ref())
                .any(|n| n.target == target.name);
            if !is_used {
                self.notes.push(Note::UnusedNotice {
                    location: target.location.clone(),
                    notice: target.name.clone(),
                });
                continue;
            }
            used += 1;
            if used == MAX_NOTICE_TARGETS as usize + 1 {
                self.errors.push(PolicyError::TooManyNoticeTargets {
                    location: target.location.clone(),
                    notice: target.name.clone(),
                    max: MAX_NOTICE_TARGETS,
                });
            }
        }
    }

    /// Names identify rules in counters and on the command line, so they must be unique, and
    /// that includes expired rules: a name that means two things in one file is a trap.
    fn check_names(&mut self, candidates: &[Candidate]) {
        let mut first: HashMap<&str, &Location> = HashMap::default();
        for c in candidates {
            match first.entry(c.name.as_str()) {
                Entry::Occupied(at) => self.errors.push(PolicyError::DuplicateRuleName {
                    name: c.name.clone(),
                    first: (*at.get()).clone(),
                    second: c.location.clone(),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(&c.location);
                }
            }
        }
    }

    /// Checks over the rules that will be loaded: a prefix in two rules of one direction (the
    /// kernel table holds one rule per prefix, so one of them would silently lose), and the
    /// kernel's capacity for rules and prefixes. Expired rules are left out: replacing an
    /// expired block with a new rule for the same prefixes is the normal way to extend it.
    fn check_across_rules(&mut self, candidates: &[Candidate]) {
        let live: Vec<&Candidate> = candidates.iter().filter(|c| !c.expired).collect();

        let mut counts: HashMap<(Direction, bool), usize> = HashMap::default();
        for direction in [Direction::Dst, Direction::Src] {
            let rules: Vec<&Candidate> = live
                .iter()
                .copied()
                .filter(|c| c.direction == Some(direction))
                .collect();
            let all = || rules.iter().flat_map(|c| &c.prefixes);
            for entry in all() {
                *counts
                    .entry((direction, matches!(entry.net, IpNet::V4(_))))
                    .or_default() += 1;
            }
            // Prefixes are unique within a rule, so one rule cannot clash with itself.
            if rules.len() < 2 {
                continue;
            }
            // Positions in the rules' prefixes laid end to end.
            let starts: Vec<usize> = rules
                .iter()
                .scan(0, |next, c| {
                    let start = *next;
                    *next += c.prefixes.len();
                    Some(start)
                })
                .collect();
            let at = |position: usize| {
                // Rules without prefixes share their start with the next rule: take the last.
                let r = starts.partition_point(|&s| s <= position) - 1;
                (rules[r], &rules[r].prefixes[position - starts[r]])
            };
            for (again, first) in repeated(all().map(|e| e.net)) {
                let ((rule, entry), (first_rule, first)) = (at(again), at(first));
                *counts
                    .entry((direction, matches!(entry.net, IpNet::V4(_))))
                    .or_default() -= 1;
                self.errors.push(PolicyError::DuplicatePrefix {
                    net: entry.net,
                    direction,
                    first: first.location.clone(),
                    first_rule: first_rule.name.clone(),
                    second: entry.location.clone(),
                    second_rule: rule.name.clone(),
                });
            }
        }

        if let Some(extra) = live.get(MAX_RULES as usize) {
            self.errors.push(PolicyError::TooManyRules {
                location: extra.location.clone(),
                rule: extra.name.clone(),
                max: MAX_RULES,
            });
        }

        for direction in [Direction::Dst, Direction::Src] {
            for (family, v4, max) in [
                ("IPv4", true, MAX_V4_PREFIXES),
                ("IPv6", false, MAX_V6_PREFIXES),
            ] {
                let count = counts.get(&(direction, v4)).copied().unwrap_or(0);
                if count > max as usize {
                    self.errors.push(PolicyError::TooManyPrefixes {
                        file: self.path.to_path_buf(),
                        direction,
                        family,
                        count,
                        max,
                    });
                }
            }
        }
    }
}

/// A policy for other modules' tests, as file `p.toml`: it must be valid, has no includes,
/// and is parsed at the Unix epoch.
#[cfg(test)]
pub(crate) fn for_test(text: &str) -> Policy {
    parse(text, Path::new("p.toml"), Timestamp::UNIX_EPOCH, |p| {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            p.display().to_string(),
        ))
    })
    .unwrap_or_else(|e| panic!("test policy must be valid:\n{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "policy.toml";

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("test timestamp: {e}"))
    }

    fn no_includes(path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no include {} in this test", path.display()),
        ))
    }

    fn with_files(files: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |path: &Path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
        }
    }

    fn ok(text: &str) -> Policy {
        parse(text, Path::new(POLICY), now(), no_includes)
            .unwrap_or_else(|e| panic!("policy should parse, got:\n{e}\n--- policy:\n{text}"))
    }

    fn errors(text: &str) -> Vec<String> {
        errors_with(text, no_includes)
    }

    fn errors_with(text: &str, read: impl Fn(&Path) -> io::Result<String>) -> Vec<String> {
        match parse(text, Path::new(POLICY), now(), read) {
            Ok(p) => panic!("policy should not parse, got {p:#?}\n--- policy:\n{text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Exactly one error, containing every fragment.
    fn one_error(text: &str, fragments: &[&str]) -> String {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        assert_contains(&errors[0], fragments);
        errors[0].clone()
    }

    fn assert_contains(text: &str, fragments: &[&str]) {
        for fragment in fragments {
            assert!(
                text.contains(fragment),
                "{text:?} should contain {fragment:?}"
            );
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("test prefix {s}: {e}"))
    }

    #[test]
    fn full_rule_parses() {
        let p = ok(r#"
malformed = "pass"
protect = ["192.0.2.0/24", "2001:db8:ffff::/48"]

[[rule]]
name = "emergency-origin"
direction = "src"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
comment = "ticket #1234"
expires = "2026-12-31T00:00:00Z"
allow_local = true
"#);
        assert_eq!(p.malformed, MalformedAction::Pass);
        assert_eq!(p.protect.len(), 2);
        assert_eq!(p.protect[1].location.line, 3);
        assert_eq!(p.rules.len(), 1);
        let r = &p.rules[0];
        assert_eq!(r.name, "emergency-origin");
        assert_eq!(r.location.to_string(), "policy.toml:6");
        assert_eq!(r.direction, Direction::Src);
        assert_eq!(r.action, Action::Drop);
        let nets: Vec<IpNet> = r.prefixes.iter().map(|e| e.net).collect();
        assert_eq!(
            nets,
            [
                net("203.0.113.0/24"),
                net("2001:db8:1::/48"),
                net("198.51.100.7/32")
            ]
        );
        assert_eq!(r.prefixes[0].location.line, 9);
        assert_eq!(r.comment.as_deref(), Some("ticket #1234"));
        assert_eq!(
            r.expires.map(|t| t.to_string()).as_deref(),
            Some("2026-12-31T00:00:00Z")
        );
        assert!(r.allow_local);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn defaults() {
        let p = ok("[[rule]]\nname = \"a\"\naction = \"pass\"\nprefixes = [\"2001:db8::1\"]\n");
        assert_eq!(p.malformed, MalformedAction::Drop);
        assert!(p.protect.is_empty());
        let r = &p.rules[0];
        assert_eq!(r.direction, Direction::Dst);
        assert!(!r.allow_local);
        assert_eq!(r.expires, None);
        assert_eq!(r.prefixes[0].net, net("2001:db8::1/128"));
    }

    #[test]
    fn references_reasons_and_signature_counts() {
        let p = ok(r#"
require_reference = true
signatures_required = 2

[[rule]]
name = "court-order"
action = "drop"
prefixes = ["203.0.113.0/24"]
reference = "CASE-123"
reason = "court order 2026/17"

[[rule]]
name = "exception"
action = "pass"
prefixes = ["203.0.113.5"]
"#);
        assert!(p.require_reference);
        assert_eq!(p.signatures_required, 2);
        assert_eq!(p.rules[0].reference.as_deref(), Some("CASE-123"));
        assert_eq!(p.rules[0].reason.as_deref(), Some("court order 2026/17"));
        assert_eq!(p.rules[1].reference, None, "a pass rule needs no reference");
        assert_eq!(ok("").signatures_required, 1);
    }

    #[test]
    fn require_reference_is_enforced_with_the_rule_line() {
        one_error(
            "require_reference = true\n\n[[rule]]\nname = \"r\"\naction = \"reject\"\nprefixes = [\"192.0.2.0/24\"]\n",
            &[
                "policy.toml:4:",
                "rule \"r\" (reject) has no reference",
                "require_reference",
            ],
        );
        one_error(
            "[[rule]]\nname = \"r\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\nreference = \"  \"\n",
            &["policy.toml:5:", "reference \"  \" is empty"],
        );
        one_error(
            "[[rule]]\nname = \"r\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\nreference = \"a\\nb\"\n",
            &["policy.toml:5:", "contains '\\n'"],
        );
        one_error(
            "signatures_required = 0\n",
            &["policy.toml:1:", "signatures_required = 0 is out of range"],
        );
    }

    #[test]
    fn empty_file_is_an_empty_policy() {
        let p = ok("");
        assert!(p.rules.is_empty());
    }

    #[test]
    fn u8_values_match_the_kernel_abi() {
        assert_eq!(Direction::Dst.as_u8(), filter_common::direction::DST);
        assert_eq!(Direction::Src.as_u8(), filter_common::direction::SRC);
        assert_eq!(
            Direction::from_u8(Direction::Src.as_u8()),
            Some(Direction::Src)
        );
        assert_eq!(Direction::from_u8(9), None);
        assert_eq!(Action::Pass.as_u8(), filter_common::action::PASS);
        assert_eq!(Action::Drop.as_u8(), filter_common::action::DROP);
        assert_eq!(Action::Drop.to_string(), "drop");
        assert_eq!(
            MalformedAction::Drop.as_u8(),
            filter_common::malformed::DROP
        );
        assert_eq!(
            MalformedAction::Pass.as_u8(),
            filter_common::malformed::PASS
        );
    }

    #[test]
    fn toml_syntax_error_has_line() {
        one_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"10.0.0.0/8\"\n",
            &["policy.toml:4:"],
        );
    }

    #[test]
    fn unknown_key_has_line_and_name() {
        one_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefix = [\"192.0.2.0/24\"]\n",
            &["policy.toml:4:", "prefix"],
        );
        one_error(
            "malformed = \"drop\"\nprotekt = []\n",
            &["policy.toml:2:", "protekt"],
        );
    }

    #[test]
    fn wrong_type_has_line() {
        one_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\", 7]\n",
            &["policy.toml:4:"],
        );
        one_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nallow_local = \"yes\"\nprefixes = [\"192.0.2.0/24\"]\n",
            &["policy.toml:4:"],
        );
    }

    #[test]
    fn missing_action_is_an_error() {
        one_error(
            "[[rule]]\nname = \"a\"\nprefixes = [\"192.0.2.0/24\"]\n",
            &["policy.toml:", "action"],
        );
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let e = one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\n  \"192.0.2.0/24\",\n  \"10.0.0.1/8\",\n]\n",
            &[],
        );
        assert_eq!(
            e,
            "policy.toml:6: rule \"x\": \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"
        );
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"2001:db8::1/32\"]\n",
            &["policy.toml:4:", "\"2001:db8::1/32\"", "\"2001:db8::/32\""],
        );
    }

    #[test]
    fn bad_addresses_and_lengths() {
        let text = r#"[[rule]]
name = "x"
action = "drop"
prefixes = [
  "not-an-ip",
  "192.0.2.0/33",
  "2001:db8::/129",
  "192.0.2.0/",
  "192.0.2.0/+8",
  "192.0.2.0/x",
  "256.0.0.0/8",
  " 192.0.2.0/24",
]
"#;
        let errors = errors(text);
        assert_eq!(errors.len(), 8, "{errors:#?}");
        assert_contains(
            &errors[0],
            &["policy.toml:5:", "\"not-an-ip\"", "not an IP address"],
        );
        assert_contains(
            &errors[1],
            &["policy.toml:6:", "\"192.0.2.0/33\"", "at most /32"],
        );
        assert_contains(
            &errors[2],
            &["policy.toml:7:", "\"2001:db8::/129\"", "at most /128"],
        );
        assert_contains(
            &errors[3],
            &["policy.toml:8:", "\"192.0.2.0/\"", "invalid prefix length"],
        );
        assert_contains(&errors[4], &["policy.toml:9:", "\"192.0.2.0/+8\""]);
        assert_contains(&errors[5], &["policy.toml:10:", "\"192.0.2.0/x\""]);
        assert_contains(&errors[6], &["policy.toml:11:", "\"256.0.0.0/8\""]);
        assert_contains(&errors[7], &["policy.toml:12:", "\" 192.0.2.0/24\""]);
    }

    #[test]
    fn all_errors_are_collected() {
        let text = r#"malformed = "maybe"
protect = ["192.0.2.1/24"]

[[rule]]
name = "a b"
action = "drop"
prefixes = ["198.51.100.0/24"]

[[rule]]
name = "c"
direction = "sideways"
action = "redirect"
prefixes = ["203.0.113.0/24"]
"#;
        let errors = errors(text);
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert_contains(&errors[0], &["policy.toml:1:", "\"maybe\""]);
        assert_contains(
            &errors[1],
            &[
                "policy.toml:2:",
                "protect: ",
                "\"192.0.2.1/24\"",
                "\"192.0.2.0/24\"",
            ],
        );
        assert_contains(&errors[2], &["policy.toml:5:", "\"a b\"", "' '"]);
        assert_contains(&errors[3], &["policy.toml:11:", "\"sideways\""]);
        assert_contains(
            &errors[4],
            &[
                "policy.toml:12:",
                "rule \"c\"",
                "action \"redirect\" needs notice",
            ],
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let text = "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"a\", \"b\"]\n";
        let e = parse(text, Path::new(POLICY), now(), no_includes)
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert_eq!(e.to_string().lines().count(), 2, "{e}");
    }

    #[test]
    fn unknown_action() {
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"block\"\nprefixes = [\"192.0.2.0/24\"]\n",
            &[
                "policy.toml:3:",
                "rule \"x\"",
                "unknown action \"block\"",
                "\"redirect\" or \"reject\"",
            ],
        );
    }

    #[test]
    fn bad_malformed_value() {
        one_error(
            "malformed = \"ignore\"\n",
            &["policy.toml:1:", "\"ignore\""],
        );
    }

    #[test]
    fn modes() {
        let p = ok(
            "mode = \"shadow\"\n[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"10.0.0.0/8\"]\n",
        );
        assert_eq!(p.mode, Mode::Shadow);
        assert_eq!(
            p.rules[0].mode,
            Mode::Shadow,
            "a shadow policy shadows every rule"
        );
        let p = ok(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nmode = \"shadow\"\n\
                    prefixes = [\"10.0.0.0/8\"]\n[[rule]]\nname = \"b\"\naction = \"drop\"\n\
                    mode = \"enforce\"\nprefixes = [\"10.1.0.0/16\"]\n",
        );
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(
            (p.rules[0].mode, p.rules[1].mode),
            (Mode::Shadow, Mode::Enforce)
        );
        let errors = errors(
            "mode = \"dry-run\"\n[[rule]]\nname = \"a\"\naction = \"drop\"\n\
             mode = \"Shadow\"\nprefixes = [\"10.0.0.0/8\"]\n",
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_contains(
            &errors[0],
            &[
                "policy.toml:1:",
                "mode = \"dry-run\"",
                "\"enforce\" or \"shadow\"",
            ],
        );
        assert_contains(
            &errors[1],
            &["policy.toml:5:", "rule \"a\": mode = \"Shadow\""],
        );
    }

    #[test]
    fn bad_protect_entries() {
        let errors =
            errors("protect = [\n  \"192.0.2.0/24\",\n  \"bogus\",\n  \"2001:db8::1/48\",\n]\n");
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_contains(&errors[0], &["policy.toml:3:", "protect: \"bogus\""]);
        assert_contains(
            &errors[1],
            &["policy.toml:4:", "\"2001:db8::1/48\"", "\"2001:db8::/48\""],
        );
    }

    #[test]
    fn duplicate_prefix_across_rules_names_both() {
        let text = r#"[[rule]]
name = "first"
action = "drop"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "second"
action = "pass"
prefixes = ["198.51.100.0/24", "203.0.113.0/24"]
"#;
        let e = one_error(text, &[]);
        assert_eq!(
            e,
            "policy.toml:9: rule \"second\": 203.0.113.0/24 is already in rule \"first\" at \
             policy.toml:4; a prefix can belong to only one dst rule"
        );
    }

    #[test]
    fn duplicates_across_many_rules_each_name_the_first_owner_in_written_order() {
        let text = r#"[[rule]]
name = "a"
action = "drop"
prefixes = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]

[[rule]]
name = "empty"
action = "drop"
prefixes = []

[[rule]]
name = "from"
direction = "src"
action = "drop"
prefixes = ["192.0.2.3"]

[[rule]]
name = "c"
action = "drop"
prefixes = ["192.0.2.2", "2001:db8::1", "192.0.2.3", "192.0.2.1", "192.0.2.3"]

[[rule]]
name = "d"
action = "pass"
prefixes = ["192.0.2.3"]
"#;
        let clashes: Vec<String> = errors(text)
            .into_iter()
            .filter(|e| e.contains("is already in rule"))
            .map(|e| e.split(';').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            clashes,
            [
                "policy.toml:20: rule \"c\": 192.0.2.2/32 is already in rule \"a\" at policy.toml:4",
                "policy.toml:20: rule \"c\": 2001:db8::1/128 is already in rule \"a\" at policy.toml:4",
                "policy.toml:20: rule \"c\": 192.0.2.1/32 is already in rule \"a\" at policy.toml:4",
                "policy.toml:25: rule \"d\": 192.0.2.3/32 is already in rule \"c\" at policy.toml:20",
            ]
        );
    }

    #[test]
    fn duplicate_prefix_in_different_spelling() {
        one_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"192.0.2.7\"]\n\
             [[rule]]\nname = \"b\"\naction = \"drop\"\nprefixes = [\"192.0.2.7/32\"]\n",
            &[
                "policy.toml:8:",
                "192.0.2.7/32",
                "\"a\"",
                "policy.toml:4",
                "\"b\"",
            ],
        );
    }

    #[test]
    fn same_prefix_in_dst_and_src_rules_is_fine() {
        let p = ok(r#"[[rule]]
name = "to"
action = "drop"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "from"
direction = "src"
action = "drop"
prefixes = ["203.0.113.0/24"]
"#);
        assert_eq!(p.rules.len(), 2);
    }

    #[test]
    fn duplicate_within_rule_is_a_note() {
        let p = ok(r#"[[rule]]
name = "x"
action = "drop"
prefixes = [
  "203.0.113.0/24",
  "203.0.113.0/24",
]
"#);
        assert_eq!(p.rules[0].prefixes.len(), 1);
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert_eq!(
            p.notes[0].to_string(),
            "policy.toml:6: rule \"x\": 203.0.113.0/24 is already listed at policy.toml:5; loaded once"
        );
    }

    #[test]
    fn duplicate_rule_names_name_both() {
        let text = r#"[[rule]]
name = "x"
action = "drop"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "x"
action = "drop"
prefixes = ["198.51.100.0/24"]
"#;
        let e = one_error(text, &[]);
        assert_eq!(
            e,
            "policy.toml:7: rule name \"x\" is already used at policy.toml:2"
        );
    }

    #[test]
    fn bad_names() {
        let long = "n".repeat(65);
        let text = format!(
            "[[rule]]\nname = \"\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\n\
             [[rule]]\nname = \"{long}\"\naction = \"drop\"\nprefixes = [\"192.0.2.1\"]\n\
             [[rule]]\nname = \"caf\u{e9}\"\naction = \"drop\"\nprefixes = [\"192.0.2.2\"]\n\
             [[rule]]\nname = \"{}\"\naction = \"drop\"\nprefixes = [\"192.0.2.3\"]\n",
            "m".repeat(64)
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert_contains(&errors[0], &["policy.toml:2:", "\"\"", "is empty"]);
        assert_contains(&errors[1], &["policy.toml:6:", &long, "65 bytes"]);
        assert_contains(&errors[2], &["policy.toml:10:", "caf\u{e9}", "'\u{e9}'"]);
    }

    #[test]
    fn empty_rule() {
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\n",
            &["policy.toml:2:", "rule \"x\" has no prefixes"],
        );
        let errors = errors_with(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\ninclude = [\"empty.txt\"]\n",
            with_files(&[("empty.txt", "# nothing here\n\n; nor here\n")]),
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_contains(&errors[0], &["policy.toml:2:", "has no prefixes"]);
    }

    #[test]
    fn rule_with_only_bad_prefixes_is_not_also_empty() {
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"nope\"]\n",
            &["\"nope\""],
        );
    }

    #[test]
    fn includes_are_relative_to_the_policy_directory() {
        let read = with_files(&[(
            "/etc/edgeblock/lists/a.netset",
            "# FireHOL style\n198.51.100.64/26\n233.252.0.0/24\n",
        )]);
        let p = parse(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\ninclude = [\"lists/a.netset\"]\n",
            Path::new("/etc/edgeblock/policy.toml"),
            now(),
            read,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &p.rules[0];
        assert_eq!(r.prefixes.len(), 3);
        assert_eq!(
            r.prefixes[1].location.to_string(),
            "/etc/edgeblock/lists/a.netset:2"
        );
        assert_eq!(r.prefixes[2].net, net("233.252.0.0/24"));
    }

    #[test]
    fn unreadable_include_names_path_line_and_os_error() {
        let errors = errors(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\ninclude = [\n  \"lists/missing.txt\",\n]\n",
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_contains(
            &errors[0],
            &[
                "policy.toml:6:",
                "rule \"x\"",
                "\"lists/missing.txt\"",
                "no include lists/missing.txt",
            ],
        );
    }

    #[test]
    fn unreadable_include_is_not_also_an_empty_rule() {
        let errors =
            errors("[[rule]]\nname = \"x\"\naction = \"drop\"\ninclude = [\"gone.txt\"]\n");
        assert_eq!(errors.len(), 1, "{errors:#?}");
    }

    #[test]
    fn bad_line_in_include_names_the_list_line_and_the_rule() {
        let errors = errors_with(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\ninclude = [\"bad.txt\"]\n",
            with_files(&[(
                "bad.txt",
                "192.0.2.0/24\n\n192.0.2.300\n198.51.100.1/24 ; SBL1\n",
            )]),
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            errors[0],
            "bad.txt:3: rule \"x\" (included at policy.toml:4): \"192.0.2.300\" is not an IP \
             address or CIDR prefix"
        );
        assert_contains(
            &errors[1],
            &["bad.txt:4:", "\"198.51.100.1/24\"", "\"198.51.100.0/24\""],
        );
    }

    #[test]
    fn duplicate_prefix_between_include_and_other_rule() {
        let errors = errors_with(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"233.252.0.0/24\"]\n\
             [[rule]]\nname = \"b\"\naction = \"drop\"\ninclude = [\"l.txt\"]\n",
            with_files(&[("l.txt", "# list\n233.252.0.0/24\n")]),
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_contains(&errors[0], &["l.txt:2:", "\"b\"", "\"a\"", "policy.toml:4"]);
    }

    #[test]
    fn duplicate_between_inline_and_include_is_a_note() {
        let p = parse(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"233.252.0.0/24\"]\ninclude = [\"l.txt\"]\n",
            Path::new(POLICY),
            now(),
            with_files(&[("l.txt", "233.252.0.0/24\n198.18.0.0/15\n")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.rules[0].prefixes.len(), 2);
        assert_eq!(p.notes.len(), 1);
        assert_contains(&p.notes[0].to_string(), &["l.txt:1:", "policy.toml:4"]);
    }

    #[test]
    fn firehol_netset() {
        let text = "\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# Maintainer      : FireHOL
#

198.51.100.64/26
233.252.0.0/24
203.0.113.9
  198.18.0.0/15   # trailing comment
";
        let entries =
            parse_prefix_list(text, Path::new("l.netset")).unwrap_or_else(|e| panic!("{e:?}"));
        let nets: Vec<String> = entries.iter().map(|e| e.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "198.51.100.64/26",
                "233.252.0.0/24",
                "203.0.113.9/32",
                "198.18.0.0/15"
            ]
        );
        assert_eq!(entries[0].location.to_string(), "l.netset:9");
        assert_eq!(entries[3].location.line, 12);
    }

    #[test]
    fn spamhaus_drop_and_ipv6_crlf_and_bom() {
        let text = "\u{feff}; Spamhaus DROP List 2025/01/01\r\n; Expires: Thu, 02 Jan 2025\r\n\
                    198.18.0.0/15 ; SBL000001\r\n2001:db8:dead::/48 ; SBL000002\r\n";
        let entries =
            parse_prefix_list(text, Path::new("drop.txt")).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].net, net("2001:db8:dead::/48"));
        assert_eq!(entries[1].location.line, 4);
    }

    #[test]
    fn spamhaus_sample_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/lists/spamhaus-drop-sample.txt");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let entries =
            parse_prefix_list(&text, &path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert!(entries.len() >= 3, "{entries:?}");
    }

    #[test]
    fn list_bad_line() {
        let errors = parse_prefix_list("192.0.2.0/24\n1.2.3.4 5.6.7.8\n", Path::new("feed.txt"))
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            errors[0].to_string(),
            "feed.txt:2: a line of 15 characters (not shown) is not an IP address or CIDR prefix"
        );
    }

    #[test]
    fn an_included_secret_file_is_not_echoed() {
        let shadow = "root:$y$j9T$Fq3sx7Vb0OZDnDTHQ8/pr.$KrtM0xsXxC9Tz7d5nRVq7yL8ufgXhU7d8sEJPl0/1n3:20000:0:99999:7:::\n\
                      daemon:*:20000:0:99999:7:::\n\
                      deadbeefcafebabe0123456789abcdef\n\
                      10.0.0.1/8secret-token-after-a-valid-address-that-goes-on-and-on\n";
        let errors = errors_with(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\ninclude = [\"/etc/shadow\"]\n",
            with_files(&[("/etc/shadow", shadow)]),
        );
        assert_eq!(errors.len(), 4, "{errors:#?}");
        let all = errors.join("\n");
        for secret in ["root", "j9T", "Fq3sx7", "daemon", "deadbeef", "on-and-on"] {
            assert!(!all.contains(secret), "{secret:?} leaked: {all}");
        }
        assert_eq!(
            errors[0],
            "/etc/shadow:1: rule \"x\" (included at policy.toml:4): a line of 97 characters (not \
             shown) is not an IP address or CIDR prefix"
        );
        // A line that starts with an address is quoted, but only as far as a prefix can reach.
        assert_contains(
            &errors[3],
            &[
                "/etc/shadow:4:",
                "\"10.0.0.1/8secret-token-after-a-valid-address-that...\"",
                "\"8secret-...\"",
            ],
        );
        assert!(errors[3].len() < 200, "{}", errors[3]);
    }

    #[test]
    fn hostile_names_and_paths_reach_no_message_unescaped() {
        // A rule name with a terminal title escape and a newline, failing validation; the
        // same rule also has other problems whose errors name it.
        let name = "evil\u{1b}]0;pwned\u{7}\nfake: error\u{202e}";
        let list = "l\u{1b}[31m.txt";
        let (name, list) = (toml::Value::from(name), toml::Value::from(list));
        let text = format!(
            "[[rule]]\nname = {name}\naction = \"explode\"\ndirection = \"up\"\n\
             include = [{list}]\nnotice_status = 404\n\
             [[rule]]\nname = {name}\naction = \"drop\"\nprefixes = [\"192.0.2.0/33\"]\n\
             include = [\"lists/x\\u001b[2J.txt\"]\n"
        );
        let read = with_files(&[(
            "lists/x\u{1b}[2J.txt",
            "10.0.0.0/8\n\u{1b}[2J\u{1b}[H fake\n1.2.3.4/\u{1b}[2J\n",
        )]);
        let errors = errors_with(&text, read);
        assert!(errors.len() >= 6, "{errors:#?}");
        for e in &errors {
            assert!(
                !e.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "unescaped control character in {e:?}"
            );
        }
        let all = errors.join("\n");
        assert_contains(
            &all,
            &["\\u{1b}]0;pwned\\u{7}\\n", "lists/x\\u{1b}[2J.txt:3:"],
        );
    }

    #[test]
    fn list_of_garbage_is_capped() {
        let text = "<html>\n".repeat(MAX_LIST_ERRORS + 5);
        let errors = parse_prefix_list(&text, Path::new("feed.txt"))
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert_eq!(errors.len(), MAX_LIST_ERRORS + 1);
        assert_eq!(
            errors[MAX_LIST_ERRORS].to_string(),
            "feed.txt: 5 more bad lines not shown"
        );
    }

    #[test]
    fn long_bad_list_line_is_shortened() {
        let errors = parse_prefix_list(&"x".repeat(10_000), Path::new("feed.txt"))
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert!(errors[0].to_string().len() < 200, "{}", errors[0]);
    }

    #[test]
    fn expired_rule_is_a_note_and_not_loaded() {
        let text = r#"[[rule]]
name = "live"
action = "drop"
prefixes = ["203.0.113.0/24"]
expires = "2026-12-31T00:00:00Z"

[[rule]]
name = "old"
action = "drop"
prefixes = ["198.51.100.0/24"]
expires = "2025-01-01T00:00:00Z"

[[rule]]
name = "exactly-now"
action = "drop"
prefixes = ["233.252.0.0/24"]
expires = 2026-06-01T02:00:00+02:00
"#;
        let p = ok(text);
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["live"]);
        let notes: Vec<String> = p.notes.iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            [
                "policy.toml:11: rule \"old\" expired at 2025-01-01T00:00:00Z; not loaded",
                "policy.toml:17: rule \"exactly-now\" expired at 2026-06-01T00:00:00Z; not loaded",
            ]
        );
    }

    #[test]
    fn expired_rule_does_not_conflict_with_its_replacement() {
        let p = ok(r#"[[rule]]
name = "old"
action = "drop"
prefixes = ["198.51.100.0/24"]
expires = "2025-01-01T00:00:00Z"

[[rule]]
name = "new"
action = "drop"
prefixes = ["198.51.100.0/24"]
"#);
        assert_eq!(p.rules.len(), 1);
    }

    #[test]
    fn bad_expires() {
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\nexpires = \"next tuesday\"\n",
            &["policy.toml:5:", "rule \"x\"", "\"next tuesday\""],
        );
        // No offset: ambiguous across time zones.
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\nexpires = 2026-12-31T00:00:00\n",
            &["policy.toml:5:", "\"2026-12-31T00:00:00\""],
        );
        one_error(
            "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"192.0.2.0/24\"]\nexpires = 20261231\n",
            &["policy.toml:5:", "integer"],
        );
    }

    #[test]
    fn load_reads_from_disk_and_reports_unreadable_policy() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/does-not-exist.toml");
        let e = load(&path, now())
            .err()
            .unwrap_or_else(|| panic!("should fail"));
        assert_contains(
            &e.to_string(),
            &["does-not-exist.toml", "cannot read the policy file"],
        );
    }

    #[test]
    fn example_policy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
        let p = load(&path, now()).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        for name in ["hijacked-ranges", "abusive-source"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn too_many_rules() {
        let text: String = (0..=MAX_RULES)
            .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"drop\"\nprefixes = [\"2001:db8::{i:x}\"]\n"))
            .collect();
        let last = 4 * MAX_RULES as usize + 2;
        one_error(
            &text,
            &[
                &format!("policy.toml:{last}:"),
                "rule \"r4096\"",
                "at most 4096 rules",
            ],
        );
        // Expired rules do not count.
        let text = text.replacen(
            "action = \"drop\"",
            "action = \"drop\"\nexpires = \"2000-01-01T00:00:00Z\"",
            1,
        );
        assert_eq!(ok(&text).rules.len(), MAX_RULES as usize);
    }

    /// docs/policy.md shows examples/policy.toml as its complete example; keep them the same.
    #[test]
    fn docs_show_the_example_policy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |p: &str| {
            std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
        };
        let example = read("examples/policy.toml");
        let docs = read("docs/policy.md");
        // The example's opening comment block is about the demo, not the format.
        let (_, body) = example
            .split_once("\n\n")
            .unwrap_or_else(|| panic!("examples/policy.toml has no header block"));
        assert!(
            docs.contains(body),
            "docs/policy.md should contain examples/policy.toml after its header:\n{body}"
        );
    }

    /// A policy with one notice target and a redirect rule using it, for the notice tests.
    const REDIRECT: &str = r#"reject_rate = 500
reject_burst = 50

[notice.main]
interface = "eth1"
next_hop = "198.51.100.250"

[notice.v6]
interface = "notice0"
next_hop = "fe80::1"

[[rule]]
name = "court-order"
action = "redirect"
notice = "main"
notice_text = "Blocked by order of the court."
notice_url = "https://example.net/statement"
notice_status = 403
https = "notice"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "minimal"
action = "redirect"
notice = "v6"
prefixes = ["2001:db8:1::/64"]

[[rule]]
name = "abuse"
action = "reject"
prefixes = ["198.51.100.0/25"]
"#;

    #[test]
    fn redirect_and_reject_parse() {
        let p = ok(REDIRECT);
        assert_eq!((p.reject_rate, p.reject_burst), (500, 50));
        let targets: Vec<(&str, &str, String, usize)> = p
            .notices
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.interface.as_str(),
                    n.next_hop.to_string(),
                    n.location.line,
                )
            })
            .collect();
        assert_eq!(
            targets,
            [
                ("main", "eth1", "198.51.100.250".to_string(), 4),
                ("v6", "notice0", "fe80::1".to_string(), 8)
            ]
        );
        let r = &p.rules[0];
        assert_eq!(r.action, Action::Redirect);
        assert_eq!(
            r.notice,
            Some(RuleNotice {
                target: "main".into(),
                text: Some("Blocked by order of the court.".into()),
                url: Some("https://example.net/statement".into()),
                status: 403,
                https: HttpsMode::Notice,
            })
        );
        assert_eq!(
            p.rules[1].notice,
            Some(RuleNotice {
                target: "v6".into(),
                text: None,
                url: None,
                status: 451,
                https: HttpsMode::Reject,
            })
        );
        assert_eq!(p.rules[2].action, Action::Reject);
        assert_eq!(p.rules[2].notice, None);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn notice_targets_keep_file_order_not_name_order() {
        let p = ok(r#"[notice.zz]
interface = "eth1"
next_hop = "192.0.2.1"
[notice.aa]
interface = "eth2"
next_hop = "192.0.2.2"
[[rule]]
name = "a"
action = "redirect"
notice = "aa"
prefixes = ["203.0.113.0/24"]
[[rule]]
name = "z"
action = "redirect"
notice = "zz"
prefixes = ["198.51.100.0/24"]
"#);
        let names: Vec<&str> = p.notices.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["zz", "aa"]);
    }

    #[test]
    fn reject_limits_default_and_range() {
        let p = ok("");
        assert_eq!(
            (p.reject_rate, p.reject_burst),
            (DEFAULT_REJECT_RATE, DEFAULT_REJECT_BURST)
        );
        let p = ok("reject_rate = 1_000_000\nreject_burst = 100_000\n");
        assert_eq!((p.reject_rate, p.reject_burst), (1_000_000, 100_000));
        let p = ok("reject_rate = 1\nreject_burst = 1\n");
        assert_eq!((p.reject_rate, p.reject_burst), (1, 1));
        assert_eq!(
            errors("reject_rate = 0\nreject_burst = 100_001\n"),
            [
                "policy.toml:1: reject_rate = 0 is out of range; expected 1 to 1000000",
                "policy.toml:2: reject_burst = 100001 is out of range; expected 1 to 100000",
            ]
        );
        let more = errors("reject_rate = 1_000_001\nreject_burst = -5\n");
        assert_eq!(more.len(), 2, "{more:#?}");
        assert_contains(&more[0], &["policy.toml:1:", "reject_rate = 1000001"]);
        assert_contains(&more[1], &["policy.toml:2:", "reject_burst = -5"]);
        // Not an integer: the TOML parser's type error, with the line.
        one_error("reject_rate = \"fast\"\n", &["policy.toml:1:"]);
    }

    const TARGET: &str = "[notice.main]\ninterface = \"eth1\"\nnext_hop = \"192.0.2.250\"\n";

    fn redirect_rule(extra: &str) -> String {
        format!(
            "{TARGET}[[rule]]\nname = \"r\"\naction = \"redirect\"\n{extra}prefixes = [\"203.0.113.0/24\"]\n"
        )
    }

    #[test]
    fn redirect_without_notice() {
        let e = one_error(&redirect_rule(""), &[]);
        assert_eq!(
            e,
            "policy.toml:6: rule \"r\": action \"redirect\" needs notice = \"NAME\", naming a \
             [notice.NAME] table; defined: \"main\""
        );
        one_error(
            "[[rule]]\nname = \"r\"\naction = \"redirect\"\nprefixes = [\"203.0.113.0/24\"]\n",
            &[
                "policy.toml:3:",
                "needs notice",
                "the policy defines no [notice.NAME] table",
            ],
        );
    }

    #[test]
    fn redirect_to_unknown_notice_names_the_known_ones() {
        let text = format!(
            "{TARGET}[notice.backup]\ninterface = \"eth2\"\nnext_hop = \"2001:db8::2\"\n{}",
            "[[rule]]\nname = \"r\"\naction = \"redirect\"\nnotice = \"mian\"\nprefixes = [\"203.0.113.0/24\"]\n"
        );
        let e = one_error(&text, &[]);
        assert_eq!(
            e,
            "policy.toml:10: rule \"r\": notice \"mian\" is not defined; defined: \"main\", \
             \"backup\""
        );
    }

    #[test]
    fn redirect_from_a_source_is_refused() {
        let text = "[notice.n]\ninterface = \"eth1\"\nnext_hop = \"192.0.2.9\"\n\n[[rule]]\nname = \"r\"\ndirection = \"src\"\naction = \"redirect\"\nnotice = \"n\"\nprefixes = [\"198.51.100.0/24\"]\n";
        let errors = parse(
            text,
            Path::new("policy.toml"),
            jiff::Timestamp::UNIX_EPOCH,
            |p| {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    p.display().to_string(),
                ))
            },
        )
        .expect_err("a source redirect must be refused");
        let msg = errors.to_string();
        assert!(
            msg.contains(
                "policy.toml:7: rule \"r\": action \"redirect\" matches destinations only"
            ),
            "{msg}"
        );
    }

    #[test]
    fn notice_keys_on_other_actions() {
        let text = r#"[notice.main]
interface = "eth1"
next_hop = "192.0.2.250"

[[rule]]
name = "d"
action = "drop"
notice = "main"
notice_text = "x"
notice_url = "https://example.net/"
notice_status = 451
https = "notice"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "j"
action = "reject"
https = "reject"
prefixes = ["198.51.100.0/24"]

[[rule]]
name = "typo"
action = "redirct"
notice_text = "not checked: the action is already wrong"
prefixes = ["233.252.0.0/24"]
"#;
        let errors = errors(text);
        let expected = [
            "policy.toml:8: rule \"d\": notice only applies to action = \"redirect\", not \
             \"drop\"; remove it or change the action",
            "policy.toml:9: rule \"d\": notice_text only applies",
            "policy.toml:10: rule \"d\": notice_url only applies",
            "policy.toml:11: rule \"d\": notice_status only applies",
            "policy.toml:12: rule \"d\": https only applies",
            "policy.toml:18: rule \"j\": https only applies to action = \"redirect\", not \
             \"reject\"",
            "policy.toml:23: rule \"typo\": unknown action \"redirct\"",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (e, x) in errors.iter().zip(expected) {
            assert_contains(e, &[x]);
        }
    }

    #[test]
    fn bad_notice_status_and_https() {
        let errors = errors(&redirect_rule(
            "notice = \"main\"\nnotice_status = 404\nhttps = \"allow\"\n",
        ));
        assert_eq!(
            errors,
            [
                "policy.toml:8: rule \"r\": notice_status = 404 is not valid; expected 451 (the \
                 default) or 403",
                "policy.toml:9: rule \"r\": https = \"allow\" is not valid; expected \"reject\" \
                 (the default) or \"notice\"",
            ]
        );
        one_error(
            &redirect_rule("notice = \"main\"\nnotice_status = \"451\"\n"),
            &["policy.toml:8:"],
        );
    }

    #[test]
    fn notice_urls() {
        for good in [
            "https://example.net/statement",
            "http://example.net",
            "HTTPS://Example.NET/a?b=c&d=e#f",
            "https://example.net:8443/x",
            "https://[2001:db8::1]:443/x",
            "https://192.0.2.1/x%20y",
        ] {
            let p = ok(&redirect_rule(&format!(
                "notice = \"main\"\nnotice_url = \"{good}\"\n"
            )));
            assert_eq!(
                p.rules[0].notice.as_ref().and_then(|n| n.url.as_deref()),
                Some(good)
            );
        }
        for (bad, problem) in [
            ("javascript:alert(1)", "is not an http:// or https:// URL"),
            ("ftp://example.net/", "is not an http:// or https:// URL"),
            ("example.net/statement", "is not an http:// or https:// URL"),
            ("https://", "has no host name"),
            ("https:///path", "has no host name"),
            ("https://:443/", "has no host name"),
            ("https://[nope]/", "has no host name"),
            ("https://example.net/a b", "contains ' '; percent-encode it"),
            ("https://example.net/\"><script>", "contains '\"'"),
            ("https://example.net/caf\u{e9}", "contains '\u{e9}'"),
            ("https://court.example@evil.example/", "user information"),
            ("https://example.net:http/", "invalid port \"http\""),
            ("https://example.net:99999/", "invalid port \"99999\""),
        ] {
            let text = redirect_rule(&format!(
                "notice = \"main\"\nnotice_url = \"{}\"\n",
                bad.replace('\\', "\\\\").replace('"', "\\\"")
            ));
            let e = one_error(
                &text,
                &["policy.toml:8:", "rule \"r\": notice_url", problem],
            );
            assert!(
                e.contains(&format!("{bad:?}")),
                "{e:?} should quote {bad:?}"
            );
        }
    }

    #[test]
    fn bad_notice_targets() {
        let text = r#"[notice.good]
interface = "eth1"
next_hop = "192.0.2.250"

[notice.long]
interface = "a-very-long-name0"
next_hop = "192.0.2.251"

[notice.slash]
interface = "eth/1"
next_hop = "nope"

[notice.space]
interface = "eth 1"
next_hop = "224.0.0.1"

[notice.empty]
interface = ""
next_hop = "::"

[notice.dot]
interface = ".."
next_hop = "127.0.0.1"

[notice."bad name"]
interface = "eth2"
next_hop = "255.255.255.255"

[[rule]]
name = "r"
action = "redirect"
notice = "slash"
prefixes = ["203.0.113.0/24"]
"#;
        let errors = errors(text);
        let expected = [
            "policy.toml:6: notice target \"long\": interface \"a-very-long-name0\" is 17 bytes \
             long; Linux interface names are at most 15",
            "policy.toml:10: notice target \"slash\": interface \"eth/1\" contains '/'",
            "policy.toml:11: notice target \"slash\": next_hop \"nope\" is not an IPv4 or IPv6 \
             address",
            "policy.toml:14: notice target \"space\": interface \"eth 1\" contains ' '",
            "policy.toml:15: notice target \"space\": next_hop \"224.0.0.1\" is a multicast \
             address",
            "policy.toml:18: notice target \"empty\": interface \"\" is empty",
            "policy.toml:19: notice target \"empty\": next_hop \"::\" is the unspecified address",
            "policy.toml:22: notice target \"dot\": interface \"..\" is not an interface name",
            "policy.toml:23: notice target \"dot\": next_hop \"127.0.0.1\" is a loopback address",
            "policy.toml:25: notice target name \"bad name\" contains ' '",
            "policy.toml:27: notice target \"bad name\": next_hop \"255.255.255.255\" is the \
             broadcast address",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (e, x) in errors.iter().zip(expected) {
            assert_contains(e, &[x]);
        }
        // The rule names a defined (if broken) target: no "not defined" on top.
        assert!(
            !errors.iter().any(|e| e.contains("not defined")),
            "{errors:#?}"
        );
    }

    #[test]
    fn interface_names() {
        for good in [
            "eth0",
            "enp1s0f1",
            "a",
            "notice.1",
            "veth-x_y@z",
            "fifteen-bytes-x",
        ] {
            assert_eq!(check_interface_name(good), Ok(()), "{good}");
        }
        assert_eq!(
            check_interface_name("eth:0"),
            Err(InterfaceProblem::BadChar { ch: ':' })
        );
        assert_eq!(
            check_interface_name("eth\t0"),
            Err(InterfaceProblem::BadChar { ch: '\t' })
        );
        assert_eq!(
            check_interface_name("eth\u{0}0"),
            Err(InterfaceProblem::BadChar { ch: '\u{0}' })
        );
        assert_eq!(check_interface_name("."), Err(InterfaceProblem::Reserved));
    }

    #[test]
    fn unknown_key_in_notice_target() {
        one_error(
            "[notice.main]\ninterface = \"eth1\"\nnext_hop = \"192.0.2.250\"\nmac = \"02:00:00:00:00:01\"\n",
            &["policy.toml:4:", "mac"],
        );
        // Both keys are required.
        one_error(
            "[notice.main]\ninterface = \"eth1\"\n",
            &["policy.toml:1:", "next_hop"],
        );
    }

    #[test]
    fn unused_notice_target_is_a_note() {
        let text = format!(
            "{TARGET}[notice.spare]\ninterface = \"eth2\"\nnext_hop = \"192.0.2.251\"\n\
             [[rule]]\nname = \"r\"\naction = \"redirect\"\nnotice = \"main\"\nprefixes = [\"203.0.113.0/24\"]\n\
             [[rule]]\nname = \"old\"\naction = \"redirect\"\nnotice = \"spare\"\nprefixes = [\"198.51.100.0/24\"]\n\
             expires = \"2025-01-01T00:00:00Z\"\n"
        );
        let p = ok(&text);
        assert_eq!(p.notices.len(), 2);
        let notes: Vec<String> = p.notes.iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            [
                "policy.toml:17: rule \"old\" expired at 2025-01-01T00:00:00Z; not loaded",
                "policy.toml:4: notice target \"spare\" is not used by any loaded rule; not loaded",
            ]
        );
    }

    #[test]
    fn too_many_notice_targets() {
        let max = MAX_NOTICE_TARGETS as usize;
        let policy = |targets: usize| -> String {
            let mut text = String::new();
            for i in 0..targets {
                text += &format!(
                    "[notice.n{i}]\ninterface = \"eth1\"\nnext_hop = \"192.0.2.{}\"\n",
                    i + 1
                );
            }
            for i in 0..targets {
                text += &format!(
                    "[[rule]]\nname = \"r{i}\"\naction = \"redirect\"\nnotice = \"n{i}\"\nprefixes = [\"2001:db8::{i:x}\"]\n"
                );
            }
            text
        };
        assert_eq!(ok(&policy(max)).notices.len(), max);
        one_error(
            &policy(max + 1),
            &[
                &format!("policy.toml:{}:", 3 * max + 1),
                &format!("notice target \"n{max}\" is one too many"),
                &format!("at most {max} notice targets"),
            ],
        );
        // Unused targets do not count.
        let unused = format!(
            "[notice.spare]\ninterface = \"eth1\"\nnext_hop = \"192.0.2.254\"\n{}",
            policy(max)
        );
        assert_eq!(ok(&unused).notes.len(), 1);
    }

    #[test]
    fn expired_redirect_rules_are_still_validated() {
        one_error(
            &redirect_rule("notice = \"gone\"\nexpires = \"2025-01-01T00:00:00Z\"\n"),
            &["policy.toml:7:", "notice \"gone\" is not defined"],
        );
    }

    #[test]
    fn new_actions_match_the_kernel_abi_and_block() {
        assert_eq!(Action::Redirect.as_u8(), filter_common::action::REDIRECT);
        assert_eq!(Action::Reject.as_u8(), filter_common::action::REJECT);
        assert_eq!(Action::Redirect.to_string(), "redirect");
        assert_eq!(Action::Reject.to_string(), "reject");
        assert!(Action::Drop.blocks() && Action::Redirect.blocks() && Action::Reject.blocks());
        assert!(!Action::Pass.blocks());
        assert_eq!(HttpsMode::default(), HttpsMode::Reject);
        assert_eq!(HttpsMode::Notice.to_string(), "notice");
    }

    #[test]
    fn line_index() {
        let lines = LineIndex::new("a\nbc\n\nd");
        let got: Vec<usize> = (0..7).map(|o| lines.line(o)).collect();
        assert_eq!(got, [1, 1, 2, 2, 2, 3, 4]);
    }
}
