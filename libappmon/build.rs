//! Gives the shared library its SONAME, libappmon.so.0: the name programs linked against it
//! record, and the file the Debian package installs.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libappmon.so.0");
}
