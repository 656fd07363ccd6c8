//! Who a command runs as: user names resolved from `/etc/passwd` and `/etc/group`.
//!
//! The files are read and parsed here rather than through the C library's `getpwnam`: the guest
//! agent is a static binary, and a static glibc's name service needs shared NSS modules a small
//! guest image does not have. The parsers are pure; [`UserDb::load`] reads the two files once per
//! lookup (they are small, and a user added while the agent runs is then found).
//!
//! `root` is always known: as `/etc/passwd` has it, or, where the file does not list it (a
//! minimal image without the file at all), as uid 0, gid 0, home `/`, shell `/bin/sh`.

use std::path::{Path, PathBuf};

/// The system's user database.
pub const PASSWD: &str = "/etc/passwd";
/// The system's group database.
pub const GROUP: &str = "/etc/group";

/// A user to run a command as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// The primary group and every group that lists the user as a member, no duplicates.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// A user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {name:?} does not exist in {path}")]
    NoSuchUser { name: String, path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The parsed contents of a passwd and a group file.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    passwd_path: PathBuf,
    passwd: String,
    group: String,
}

impl UserDb {
    /// Reads `passwd` and `group`; a file that does not exist reads as empty (only `root` is
    /// known then), any other read error is an error.
    pub fn load(passwd: &Path, group: &Path) -> Result<UserDb, UserError> {
        Ok(UserDb {
            passwd_path: passwd.to_owned(),
            passwd: read_optional(passwd)?,
            group: read_optional(group)?,
        })
    }

    /// The system's files.
    pub fn system() -> Result<UserDb, UserError> {
        UserDb::load(Path::new(PASSWD), Path::new(GROUP))
    }

    /// A database made of these texts, for tests.
    pub fn from_texts(passwd: &str, group: &str) -> UserDb {
        UserDb {
            passwd_path: PathBuf::from(PASSWD),
            passwd: passwd.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Resolves a user by name.
    pub fn lookup(&self, name: &str) -> Result<Identity, UserError> {
        let found = self
            .passwd
            .lines()
            .filter_map(parse_passwd_line)
            .find(|entry| entry.name == name);
        let (uid, gid, home, shell) = match found {
            Some(e) => (e.uid, e.gid, e.home, e.shell),
            None if name == "root" => (0, 0, "/", "/bin/sh"),
            None => {
                return Err(UserError::NoSuchUser {
                    name: name.to_owned(),
                    path: self.passwd_path.clone(),
                })
            }
        };
        let mut groups = vec![gid];
        for (gid, members) in self.group.lines().filter_map(parse_group_line) {
            if members.split(',').any(|m| m == name) && !groups.contains(&gid) {
                groups.push(gid);
            }
        }
        Ok(Identity {
            name: name.to_owned(),
            uid,
            gid,
            groups,
            home: PathBuf::from(if home.is_empty() { "/" } else { home }),
            shell: PathBuf::from(if shell.is_empty() { "/bin/sh" } else { shell }),
        })
    }
}

fn read_optional(path: &Path) -> Result<String, UserError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
    shell: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell`; comments, blank and malformed lines are skipped
/// (as the C library skips them).
fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _, uid, gid, _, home, shell] = fields.as_slice() else {
        return None;
    };
    if name.is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name,
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        home,
        shell,
    })
}

/// `name:password:gid:member,member`: the gid and the member list.
fn parse_group_line(line: &str) -> Option<(u32, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    let [_, _, gid, members] = fields.as_slice() else {
        return None;
    };
    Some((gid.parse().ok()?, members))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:The App,,,:/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
short:x:5
";
    const GROUP_TEXT: &str = "\
root:x:0:
app:x:1000:
adm:x:4:syslog,app
audio:x:29:pulse,app,other
wheel:x:10:application
";

    fn db() -> UserDb {
        UserDb::from_texts(PASSWD_TEXT, GROUP_TEXT)
    }

    #[test]
    fn a_listed_user_has_its_ids_home_shell_and_member_groups() {
        let app = db().lookup("app").expect("app exists");
        assert_eq!(
            app,
            Identity {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 4, 29],
                home: "/home/app".into(),
                shell: "/bin/sh".into(),
            }
        );
    }

    #[test]
    fn group_membership_is_by_whole_name() {
        // "application" in wheel is not "app".
        assert!(!db().lookup("app").expect("app").groups.contains(&10));
    }

    #[test]
    fn an_unknown_user_is_an_error_naming_it_and_the_file() {
        let err = db().lookup("mallory").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "user \"mallory\" does not exist in /etc/passwd"
        );
    }

    #[test]
    fn malformed_lines_are_skipped_not_taken() {
        for name in ["broken", "short", "# a comment"] {
            assert!(db().lookup(name).is_err(), "{name}");
        }
    }

    #[test]
    fn root_is_known_without_a_passwd_file() {
        let root = UserDb::from_texts("", "").lookup("root").expect("root");
        assert_eq!((root.uid, root.gid, root.groups), (0, 0, vec![0]));
        assert_eq!(root.home, Path::new("/"));
    }

    #[test]
    fn root_as_listed_wins_over_the_fallback() {
        let root = db().lookup("root").expect("root");
        assert_eq!(root.home, Path::new("/root"));
        assert_eq!(root.shell, Path::new("/bin/bash"));
    }

    #[test]
    fn missing_files_read_as_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let db = UserDb::load(&dir.path().join("passwd"), &dir.path().join("group"))
            .expect("missing files are empty");
        assert!(db.lookup("root").is_ok());
        assert!(db.lookup("app").is_err());
    }
}
