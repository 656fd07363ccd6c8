//! Per-test additions to the guest image without rebuilding it.
//!
//! The kernel unpacks an initramfs made of several cpio archives one after another, compressed or
//! not, later files replacing earlier ones. So a test's own files (a guest agent config, a script
//! for /etc/appmon/init.d/) go into a small uncompressed newc archive appended to the rig's image.

use std::fs;
use std::io;
use std::path::Path;

/// A file to add to the guest's root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest, e.g. `/etc/appmon/guest.toml`.
    pub path: String,
    /// Permission bits, e.g. 0o644 or 0o755.
    pub mode: u32,
    pub contents: Vec<u8>,
}

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// An uncompressed newc cpio archive holding `files` and every parent directory they need.
pub fn newc_archive(files: &[GuestFile]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut ino = 1u32;
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut parent = String::new();
        let components: Vec<&str> = rel.split('/').collect();
        for c in &components[..components.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
                push_entry(&mut out, ino, S_IFDIR | 0o755, 2, &parent, &[]);
                ino += 1;
            }
        }
        push_entry(
            &mut out,
            ino,
            S_IFREG | (f.mode & 0o7777),
            1,
            rel,
            &f.contents,
        );
        ino += 1;
    }
    push_entry(&mut out, 0, 0, 1, "TRAILER!!!", &[]);
    out
}

fn push_entry(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).unwrap_or(u32::MAX),
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes `base` followed by an archive of `files` to `dest`. The kernel looks for an uncompressed
/// archive only at 4-byte boundaries and skips zero padding, so the base is padded first.
pub fn write_with_extra_files(base: &Path, files: &[GuestFile], dest: &Path) -> io::Result<()> {
    let mut image = fs::read(base)?;
    pad4(&mut image);
    image.extend_from_slice(&newc_archive(files));
    fs::write(dest, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, contents: &[u8]) -> GuestFile {
        GuestFile {
            path: path.into(),
            mode: 0o644,
            contents: contents.to_vec(),
        }
    }

    /// (name, mode, data) of each entry, parsed back.
    fn parse(mut a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&a[..6], b"070701", "magic at offset {off}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).expect("hex");
                usize::from_str_radix(s, 16).expect("hex field")
            };
            let (mode, filesize, namesize) = (field(1), field(6), field(11));
            let name = String::from_utf8(a[110..110 + namesize - 1].to_vec()).expect("name");
            let data_start = (110 + namesize).next_multiple_of(4);
            let data = a[data_start..data_start + filesize].to_vec();
            let next = (data_start + filesize).next_multiple_of(4);
            off += next;
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return entries;
            }
            entries.push((name, u32::try_from(mode).expect("mode"), data));
        }
    }

    #[test]
    fn archive_holds_files_and_their_parent_directories_once() {
        let a = newc_archive(&[
            file("/etc/appmon/guest.toml", b"port = 5315\n"),
            file("/etc/appmon/init.d/x", b"#!/bin/sh\n"),
        ]);
        assert_eq!(a.len() % 4, 0);
        let entries = parse(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/appmon",
                "etc/appmon/guest.toml",
                "etc/appmon/init.d",
                "etc/appmon/init.d/x"
            ]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(entries[2].1, S_IFREG | 0o644);
        assert_eq!(entries[2].2, b"port = 5315\n");
    }

    #[test]
    fn extra_archive_starts_at_a_four_byte_boundary() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("odd"), b"12345").expect("write odd base");
        let dest = dir.path().join("out");
        write_with_extra_files(&dir.path().join("odd"), &[file("/a", b"x")], &dest).expect("write");
        let out = fs::read(&dest).expect("read");
        assert_eq!(&out[..8], b"12345\0\0\0");
        assert_eq!(&out[8..14], b"070701");
    }
}
