//! What the host may launch in this guest: the `[processes]` table of `guest.toml` and the
//! decision on a launch request. Pure: no file, no process.
//!
//! ```toml
//! [processes]
//! max = 30                 # managed processes at once (running, or ended and not yet released)
//! default_user = "root"    # who a launch runs as when the host names nobody
//! output_tail = 65536      # bytes kept of each process's stdout and of its stderr
//! stop_grace = 10          # seconds between SIGTERM and SIGKILL when the agent stops
//!
//! [[processes.allow]]
//! command = "/usr/sbin/mydb"                       # exact absolute path, no PATH search
//! args = ["--config", "/etc/mydb/*.conf", { regex = "--port=[0-9]{1,5}" }]
//! extra_args = "--verbose"   # optional: any number of further arguments, each matching this
//! users = ["mydb"]           # optional: who it may run as; default: [default_user]
//! env = ["MYDB_*", "LANG"]   # optional: variable names the host may set; default: none
//! cwd = ["/var/lib/mydb"]    # optional: working directories allowed; default: any
//! ```
//!
//! A launch is allowed when some entry has exactly its `argv[0]` as `command`, its further
//! arguments match `args` one for one (and `extra_args` for any beyond), its user is in the
//! entry's users, every environment variable it sets is named by `env`, and its working
//! directory matches `cwd`. Nothing else is launched; with no entry, nothing at all.
//!
//! **Patterns** (arguments, working directories, variable names). A string is a glob:
//! - `*` is any run of characters except `/`, `?` any one character except `/`, `**` any run of
//!   characters including `/`, and `\` takes the next character literally (`\*`);
//! - no wildcard matches a `.` at the start of the argument or right after a `/`, so `/data/*`
//!   and `/data/**` never reach `/data/../etc/shadow` or a hidden file: a dot there must be
//!   written (`/data/.cache/*`);
//! - a string without wildcards is the exact argument.
//!
//! `{ regex = "..." }` is a regular expression (Rust `regex` syntax, without Unicode classes)
//! that must match the whole argument; `.` matches any character, a newline too (an argument is
//! not made of lines). `{ regex = ".*" }` is the way to say "any argument at all" (the script
//! of `sh -c`, say), where a glob would stop at a hidden path. A regex is the operator's to keep
//! tight: `.*` matches `..` too.
//!
//! In `env`, a wildcard never admits the dynamic loader's variables (`LD_PRELOAD`,
//! `LD_LIBRARY_PATH`, ... any `LD_*`), which would let the host run code of its choosing under an
//! allowed command: such a name is allowed only when written out exactly.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use appmon_wire::LaunchSpec;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Managed processes at once by default (Serviceguard's cmappserver limit).
pub const DEFAULT_MAX: u32 = 30;
/// The most an operator may configure.
pub const MAX_MAX: u32 = 1000;
/// Bytes kept of each output stream by default.
pub const DEFAULT_OUTPUT_TAIL: usize = 64 * 1024;
/// The most an operator may configure per stream.
pub const MAX_OUTPUT_TAIL: usize = 16 * 1024 * 1024;
/// The longest regular expression accepted, compiled size.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// The `[processes]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    /// Managed processes at once, running or ended and not yet released; 0 launches nothing.
    #[serde(deserialize_with = "max")]
    pub max: u32,
    /// Who a launch runs as when the host names nobody.
    #[serde(deserialize_with = "user_name")]
    pub default_user: String,
    /// Bytes kept of each output stream of each process.
    #[serde(deserialize_with = "output_tail")]
    pub output_tail: usize,
    /// When the agent stops: how long its processes have between SIGTERM and SIGKILL.
    #[serde(deserialize_with = "grace")]
    pub stop_grace: Duration,
    /// What may be launched.
    pub allow: Vec<AllowEntry>,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        ProcessesConfig {
            max: DEFAULT_MAX,
            default_user: "root".into(),
            output_tail: DEFAULT_OUTPUT_TAIL,
            stop_grace: Duration::from_secs(10),
            allow: Vec::new(),
        }
    }
}

/// One `[[processes.allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    #[serde(deserialize_with = "command")]
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<Pattern>,
    #[serde(default)]
    pub extra_args: Option<Pattern>,
    #[serde(default, deserialize_with = "user_names")]
    pub users: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<Pattern>,
    #[serde(default)]
    pub cwd: Option<Vec<Pattern>>,
}

/// An allowed launch: what to run it as and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// Index of the entry that allowed it.
    pub entry: usize,
    pub user: String,
    pub cwd: PathBuf,
}

/// Why a launch is not allowed: a sentence for the host and the guest's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed(pub String);

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ProcessesConfig {
    /// Decides on a launch. `spec.argv` is not empty and `spec.cwd`, when given, is absolute
    /// (the table checks both first).
    pub fn check(&self, spec: &LaunchSpec) -> Result<Permit, NotAllowed> {
        let program = spec.argv.first().map_or("", |a| a.as_str());
        let user = spec
            .user
            .as_ref()
            .map_or(self.default_user.as_str(), |u| u.as_str());
        let cwd = spec.cwd.as_ref().map_or("/", |c| c.as_str());
        let mut reasons = Vec::new();
        for (index, entry) in self.allow.iter().enumerate() {
            if entry.command.as_os_str() != program {
                continue;
            }
            match entry.refusal(spec, user, cwd, &self.default_user) {
                None => {
                    return Ok(Permit {
                        entry: index,
                        user: user.to_owned(),
                        cwd: PathBuf::from(cwd),
                    })
                }
                Some(why) => reasons.push(format!("allow entry {} ({why})", index + 1)),
            }
        }
        let shown = appmon_wire::escape(program);
        Err(NotAllowed(if reasons.is_empty() {
            format!("{shown} is not on the guest's allowlist")
        } else {
            format!("{shown} is not allowed so: {}", reasons.join("; "))
        }))
    }
}

impl AllowEntry {
    /// Why this entry does not allow the launch, or `None` when it does.
    fn refusal(&self, spec: &LaunchSpec, user: &str, cwd: &str, default: &str) -> Option<String> {
        let args = &spec.argv[1..];
        if args.len() < self.args.len()
            || (args.len() > self.args.len() && self.extra_args.is_none())
        {
            return Some(format!(
                "takes {}{} arguments, not {}",
                self.args.len(),
                if self.extra_args.is_some() {
                    " or more"
                } else {
                    ""
                },
                args.len()
            ));
        }
        for (at, arg) in args.iter().enumerate() {
            let Some(pattern) = self.args.get(at).or(self.extra_args.as_ref()) else {
                return Some(format!("takes no argument {}", at + 1));
            };
            if !pattern.matches(arg.as_str()) {
                return Some(format!(
                    "argument {} \"{}\" does not match {pattern}",
                    at + 1,
                    appmon_wire::escape(arg.as_str())
                ));
            }
        }
        let allowed_user = match &self.users {
            Some(users) => users.iter().any(|u| u == user),
            None => user == default,
        };
        if !allowed_user {
            return Some(format!(
                "may not run as user \"{}\"",
                appmon_wire::escape(user)
            ));
        }
        for (name, _) in &spec.env {
            if !self.env.iter().any(|p| p.admits_variable(name.as_str())) {
                return Some(format!(
                    "may not set environment variable {}",
                    appmon_wire::escape(name.as_str())
                ));
            }
        }
        if let Some(dirs) = &self.cwd {
            if !dirs.iter().any(|p| p.matches(cwd)) {
                return Some(format!(
                    "may not run in directory {}",
                    appmon_wire::escape(cwd)
                ));
            }
        }
        None
    }
}

/// An argument pattern: a glob or an anchored regular expression (module documentation).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    kind: PatternKind,
}

#[derive(Clone)]
enum PatternKind {
    Glob(Vec<Token>),
    Regex(regex_lite::Regex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    Any,
}

impl Pattern {
    /// A glob.
    pub fn glob(source: &str) -> Result<Pattern, String> {
        let mut tokens = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '\\' => Token::Char(
                    chars
                        .next()
                        .ok_or_else(|| format!("glob {source:?} ends in a lone backslash"))?,
                ),
                '?' => Token::One,
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Token::Any
                }
                '*' => Token::Star,
                c => Token::Char(c),
            });
        }
        Ok(Pattern {
            source: source.to_owned(),
            kind: PatternKind::Glob(tokens),
        })
    }

    /// A regular expression that must match the whole text.
    pub fn regex(source: &str) -> Result<Pattern, String> {
        let regex = regex_lite::RegexBuilder::new(&format!("^(?s:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("regex {source:?}: {e}"))?;
        Ok(Pattern {
            source: source.to_owned(),
            kind: PatternKind::Regex(regex),
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        match &self.kind {
            PatternKind::Glob(tokens) => glob_matches(tokens, text),
            PatternKind::Regex(regex) => regex.is_match(text),
        }
    }

    fn has_wildcard(&self) -> bool {
        match &self.kind {
            PatternKind::Glob(tokens) => tokens.iter().any(|t| !matches!(t, Token::Char(_))),
            PatternKind::Regex(_) => true,
        }
    }

    /// Whether an `env` pattern admits the variable `name` (dynamic-loader variables only by
    /// exact name).
    fn admits_variable(&self, name: &str) -> bool {
        self.matches(name) && (!name.starts_with("LD_") || !self.has_wildcard())
    }
}

/// Whether `tokens` match all of `text` (module documentation for the rules). Dynamic
/// programming over (token, character) positions: linear in their product, never exponential.
fn glob_matches(tokens: &[Token], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let wild_ok = |j: usize| !(chars[j] == '.' && (j == 0 || chars[j - 1] == '/'));
    // after[j]: tokens[i+1..] match chars[j..], for the token after the one being computed.
    let mut after = vec![false; n + 1];
    after[n] = true;
    for token in tokens.iter().rev() {
        let mut here = vec![false; n + 1];
        for j in (0..=n).rev() {
            here[j] = match *token {
                Token::Char(c) => j < n && chars[j] == c && after[j + 1],
                Token::One => j < n && chars[j] != '/' && wild_ok(j) && after[j + 1],
                Token::Star => after[j] || (j < n && chars[j] != '/' && wild_ok(j) && here[j + 1]),
                Token::Any => after[j] || (j < n && wild_ok(j) && here[j + 1]),
            };
        }
        after = here;
    }
    after[0]
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
            && matches!(
                (&self.kind, &other.kind),
                (PatternKind::Glob(_), PatternKind::Glob(_))
                    | (PatternKind::Regex(_), PatternKind::Regex(_))
            )
    }
}

impl Eq for Pattern {}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PatternKind::Glob(_) => write!(f, "glob \"{}\"", appmon_wire::escape(&self.source)),
            PatternKind::Regex(_) => write!(f, "regex \"{}\"", appmon_wire::escape(&self.source)),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        struct PatternVisitor;
        impl<'de> Visitor<'de> for PatternVisitor {
            type Value = Pattern;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a glob string or { regex = \"...\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Pattern, E> {
                Pattern::glob(v).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pattern, A::Error> {
                let mut pattern = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "regex" || pattern.is_some() {
                        return Err(de::Error::custom(format_args!(
                            "a pattern table has exactly one key, regex (not {key})"
                        )));
                    }
                    let source: String = map.next_value()?;
                    pattern = Some(Pattern::regex(&source).map_err(de::Error::custom)?);
                }
                pattern.ok_or_else(|| de::Error::custom("a pattern table needs the key regex"))
            }
        }
        d.deserialize_any(PatternVisitor)
    }
}

fn max<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    match u32::try_from(n) {
        Ok(n) if n <= MAX_MAX => Ok(n),
        _ => Err(de::Error::custom(format_args!(
            "{n} is not a number of processes between 0 and {MAX_MAX}"
        ))),
    }
}

fn output_tail<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_OUTPUT_TAIL => Ok(n),
        _ => Err(de::Error::custom(format_args!(
            "{n} is not a number of bytes between 0 and {MAX_OUTPUT_TAIL}"
        ))),
    }
}

fn grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = i64::deserialize(d)?;
    match u64::try_from(secs) {
        Ok(s) if s <= 600 => Ok(Duration::from_secs(s)),
        _ => Err(de::Error::custom(format_args!(
            "{secs} is not a number of seconds between 0 and 600"
        ))),
    }
}

fn command<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let text = String::deserialize(d)?;
    let path = Path::new(&text);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !plain || text.ends_with('/') {
        return Err(de::Error::custom(format_args!(
            "{text:?} is not an absolute path to a program (no PATH search, no . or .., no wildcards)"
        )));
    }
    Ok(PathBuf::from(text))
}

fn valid_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.contains([':', '\n', '/', ','])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a user name"))
    }
}

fn user_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    valid_user_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn user_names<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        valid_user_name(name).map_err(de::Error::custom)?;
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use appmon_wire::Text;

    fn config(text: &str) -> ProcessesConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            processes: ProcessesConfig,
        }
        toml::from_str::<Wrapper>(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .processes
    }

    fn config_error(text: &str) -> String {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrapper {
            processes: ProcessesConfig,
        }
        toml::from_str::<Wrapper>(text)
            .expect_err("invalid")
            .message()
            .to_owned()
    }

    fn launch(argv: &[&str]) -> LaunchSpec {
        LaunchSpec {
            id: "p".into(),
            argv: argv.iter().map(|a| Text::new(*a).expect("short")).collect(),
            env: Vec::new(),
            cwd: None,
            user: None,
        }
    }

    fn glob(p: &str) -> Pattern {
        Pattern::glob(p).expect("valid glob")
    }

    #[test]
    fn globs_match_as_the_module_documentation_says() {
        let cases = [
            ("/etc/app/*.conf", "/etc/app/main.conf", true),
            ("/etc/app/*.conf", "/etc/app/sub/main.conf", false),
            ("/etc/app/**", "/etc/app/sub/main.conf", true),
            ("/etc/app/*", "/etc/app/..", false),
            ("/etc/app/**", "/etc/app/../shadow", false),
            ("/etc/app/**", "/etc/app/a/../../shadow", false),
            ("/etc/app/*", "/etc/app/.hidden", false),
            ("/etc/app/.*", "/etc/app/.hidden", true),
            ("--level=?", "--level=3", true),
            ("--level=?", "--level=33", false),
            ("--name=*", "--name=a.b", true),
            ("*", "", true),
            ("?", "", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob(pattern).matches(text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn a_glob_is_linear_not_exponential() {
        let pattern = glob(&"*a".repeat(40));
        let text = "a".repeat(4000) + "b";
        let started = std::time::Instant::now();
        assert!(!pattern.matches(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_regex_must_match_the_whole_argument() {
        let port = Pattern::regex("--port=[0-9]{1,5}").expect("valid");
        assert!(port.matches("--port=5315"));
        assert!(!port.matches("--port=5315; rm -rf /"));
        assert!(!port.matches("x--port=1"));
        let alternatives = Pattern::regex("a|b").expect("valid");
        assert!(
            !alternatives.matches("ab"),
            "the anchors hold alternations too"
        );
    }

    #[test]
    fn the_documented_example_parses_and_decides() {
        let c = config(
            r#"
[processes]
max = 5
default_user = "app"
output_tail = 1024
stop_grace = 3

[[processes.allow]]
command = "/usr/sbin/mydb"
args = ["--config", "/etc/mydb/*.conf", { regex = "--port=[0-9]{1,5}" }]
extra_args = "--verbose"
users = ["mydb"]
env = ["MYDB_*", "LANG"]
cwd = ["/var/lib/mydb"]
"#,
        );
        assert_eq!((c.max, c.output_tail), (5, 1024));
        assert_eq!(c.stop_grace, Duration::from_secs(3));
        let mut ok = launch(&[
            "/usr/sbin/mydb",
            "--config",
            "/etc/mydb/a.conf",
            "--port=6000",
            "--verbose",
            "--verbose",
        ]);
        ok.user = Some("mydb".into());
        ok.cwd = Some("/var/lib/mydb".into());
        ok.env = vec![
            ("MYDB_HOME".into(), "/x".into()),
            ("LANG".into(), "C".into()),
        ];
        assert_eq!(
            c.check(&ok),
            Ok(Permit {
                entry: 0,
                user: "mydb".into(),
                cwd: "/var/lib/mydb".into()
            })
        );
        let refusals = [
            (
                {
                    let mut l = ok.clone();
                    l.user = None;
                    l
                },
                "may not run as user \"app\"",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.argv.truncate(3);
                    l
                },
                "takes 3 or more arguments, not 2",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.argv[3] = "--port=x".into();
                    l
                },
                "argument 3 \"--port=x\" does not match regex",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.argv.push("--debug".into());
                    l
                },
                "argument 6 \"--debug\" does not match glob \"--verbose\"",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.env.push(("PATH".into(), "/tmp".into()));
                    l
                },
                "may not set environment variable PATH",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.cwd = Some("/tmp".into());
                    l
                },
                "may not run in directory /tmp",
            ),
            (
                {
                    let mut l = ok.clone();
                    l.argv[0] = "/usr/sbin/mydb2".into();
                    l
                },
                "/usr/sbin/mydb2 is not on the guest's allowlist",
            ),
        ];
        for (spec, needle) in refusals {
            let why = c.check(&spec).expect_err(needle).0;
            assert!(why.contains(needle), "{why} (wanted {needle})");
        }
    }

    #[test]
    fn nothing_is_allowed_without_entries() {
        let c = ProcessesConfig::default();
        assert_eq!(c.max, 30);
        assert!(c.check(&launch(&["/bin/true"])).is_err());
    }

    #[test]
    fn an_entry_without_users_allows_only_the_default_user() {
        let c = config("[processes]\n[[processes.allow]]\ncommand = \"/bin/true\"\n");
        assert!(c.check(&launch(&["/bin/true"])).is_ok());
        let mut as_root = launch(&["/bin/true"]);
        as_root.user = Some("root".into());
        assert!(c.check(&as_root).is_ok(), "root is the default user");
        as_root.user = Some("daemon".into());
        assert!(c.check(&as_root).is_err());
        assert!(
            c.check(&launch(&["/bin/true", "x"])).is_err(),
            "no args means none"
        );
    }

    #[test]
    fn later_entries_are_tried_and_every_reason_is_told() {
        let c = config(
            r#"
[processes]
[[processes.allow]]
command = "/bin/sh"
args = ["-c", "echo *"]
[[processes.allow]]
command = "/bin/sh"
args = ["-c", "exit ?"]
"#,
        );
        assert_eq!(
            c.check(&launch(&["/bin/sh", "-c", "exit 7"]))
                .map(|p| p.entry),
            Ok(1)
        );
        let why = c
            .check(&launch(&["/bin/sh", "-c", "reboot"]))
            .expect_err("neither")
            .0;
        assert!(
            why.contains("allow entry 1 (") && why.contains("allow entry 2 ("),
            "{why}"
        );
    }

    #[test]
    fn loader_variables_need_an_exact_entry() {
        let c =
            config("[processes]\n[[processes.allow]]\ncommand = \"/bin/true\"\nenv = [\"*\"]\n");
        let mut spec = launch(&["/bin/true"]);
        spec.env = vec![("ANYTHING".into(), "1".into())];
        assert!(c.check(&spec).is_ok());
        spec.env = vec![("LD_PRELOAD".into(), "/tmp/evil.so".into())];
        assert!(c.check(&spec).is_err(), "a wildcard never admits LD_*");
        let exact = config(
            "[processes]\n[[processes.allow]]\ncommand = \"/bin/true\"\nenv = [\"LD_LIBRARY_PATH\"]\n",
        );
        spec.env = vec![("LD_LIBRARY_PATH".into(), "/opt/lib".into())];
        assert!(exact.check(&spec).is_ok());
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let cases = [
            ("command = \"sh\"", "absolute path"),
            ("command = \"/bin/../bin/sh\"", "absolute path"),
            ("command = \"/bin/\"", "absolute path"),
            ("command = \"/bin/sh\"\nargs = [{ regex = \"(\" }]", "regex"),
            (
                "command = \"/bin/sh\"\nargs = [{ glob = \"x\" }]",
                "exactly one key",
            ),
            (
                "command = \"/bin/sh\"\nargs = [\"x\\\\\"]",
                "lone backslash",
            ),
            ("command = \"/bin/sh\"\nargs = [3]", "a glob string"),
            (
                "command = \"/bin/sh\"\nusers = [\"a b\"]",
                "not a user name",
            ),
            ("command = \"/bin/sh\"\nuser = [\"root\"]", "unknown field"),
        ];
        for (entry, needle) in cases {
            let text = format!("[processes]\n[[processes.allow]]\n{entry}\n");
            let message = config_error(&text);
            assert!(message.contains(needle), "{entry}: {message}");
        }
        for (key, needle) in [
            ("max = 1001", "between 0 and 1000"),
            ("max = -1", "between 0 and 1000"),
            ("output_tail = 99999999999", "number of bytes"),
            ("stop_grace = 601", "seconds"),
            ("default_user = \"\"", "not a user name"),
        ] {
            let message = config_error(&format!("[processes]\n{key}\n"));
            assert!(message.contains(needle), "{key}: {message}");
        }
    }
}
