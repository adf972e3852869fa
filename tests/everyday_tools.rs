//! The everyday tools work on a mount: tar with xattrs, cp -a, rsync -a, git clone + status of
//! a real repository (this one), building a C project with make and a Rust crate with cargo,
//! and sqlite3 in WAL mode (which maps its -shm file MAP_SHARED). `.ci/run` installs the tools.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::Mounted;

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").args(["-ec", script]).current_dir(dir).output().expect("sh");
    assert!(
        out.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setx(p: &Path, name: &str, v: &[u8]) {
    let (p, n) = (CString::new(p.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    assert_eq!(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }, 0);
}

fn getx(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (CString::new(p.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: the buffer holds 256 bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// A small tree with data, an empty file, a symlink, a hard link, modes, an xattr, a subdir.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("data.bin"), (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("sub/deeper/note.txt"), b"hello\n").unwrap();
    fs::set_permissions(root.join("sub/deeper/note.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("sub/deeper/note.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("data.bin"), root.join("hard.bin")).unwrap();
    setx(&root.join("data.bin"), "user.origin", b"mmapfs-test");
}

fn check_tree(root: &Path, xattrs: bool) {
    let data = fs::read(root.join("data.bin")).unwrap();
    assert_eq!(data.len(), 800_000);
    assert_eq!(&data[400..404], &100u32.to_le_bytes());
    assert_eq!(fs::read(root.join("sub/deeper/note.txt")).unwrap(), b"hello\n");
    assert_eq!(fs::metadata(root.join("sub/deeper/note.txt")).unwrap().mode() & 0o777, 0o640);
    assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("sub/deeper/note.txt"));
    assert_eq!(fs::metadata(root.join("hard.bin")).unwrap().ino(), fs::metadata(root.join("data.bin")).unwrap().ino());
    assert_eq!(fs::metadata(root.join("empty")).unwrap().len(), 0);
    if xattrs {
        assert_eq!(getx(&root.join("data.bin"), "user.origin").as_deref(), Some(&b"mmapfs-test"[..]));
    }
}

#[test]
fn tar_with_xattrs_cp_a_and_rsync_a() {
    let m = Mounted::new(&[]);
    make_tree(&m.path("src"));
    sh(
        &m.mnt,
        "tar --xattrs --xattrs-include='*' -cf t.tar -C src . && mkdir x && tar --xattrs --xattrs-include='*' -xpf t.tar -C x",
    );
    check_tree(&m.path("x"), true);
    sh(&m.mnt, "cp -a src c");
    check_tree(&m.path("c"), true);
    let (a, b) = (fs::metadata(m.path("src/data.bin")).unwrap(), fs::metadata(m.path("c/data.bin")).unwrap());
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "cp -a keeps mtime");
    sh(
        &m.mnt,
        "rsync -aHX src/ r/ && rsync -aHX --checksum --dry-run --itemize-changes src/ r/ > changes && test ! -s changes",
    );
    check_tree(&m.path("r"), true);
    // The same archive extracted off the mount matches byte for byte.
    let out = tempfile::tempdir().unwrap();
    sh(
        out.path(),
        &format!("tar -xf {} && cmp data.bin {}", m.path("t.tar").display(), m.path("src/data.bin").display()),
    );
}

#[test]
fn git_clone_status_and_commit() {
    let m = Mounted::new(&[]);
    let repo = env!("CARGO_MANIFEST_DIR");
    let status = sh(
        &m.mnt,
        &format!(
            "git clone -q {repo} clone && cd clone && git status --porcelain && git fsck --no-progress 2>&1 | grep -v '^dangling' || true"
        ),
    );
    assert!(status.trim().is_empty(), "fresh clone not clean: {status}");
    let out = sh(
        &m.path("clone"),
        "echo change >> README.md && git status --porcelain && git -c user.name=t -c user.email=t@t commit -qam test && git status --porcelain && git log --oneline | head -1",
    );
    assert!(out.contains(" M README.md") && out.trim_end().ends_with("test"), "{out}");
}

#[test]
fn build_a_c_project_and_a_rust_crate() {
    let m = Mounted::new(&[]);
    let c = m.path("cproj");
    fs::create_dir(&c).unwrap();
    fs::write(c.join("lib.c"), "int twice(int x) { return 2 * x; }\n").unwrap();
    fs::write(
        c.join("main.c"),
        "#include <stdio.h>\nint twice(int);\nint main(void) { printf(\"%d\\n\", twice(21)); return 0; }\n",
    )
    .unwrap();
    fs::write(c.join("Makefile"), "app: main.o lib.o\n\tcc -o app main.o lib.o\n%.o: %.c\n\tcc -c -o $@ $<\n").unwrap();
    assert_eq!(sh(&c, "make -s && ./app").trim(), "42");
    // Touch a source: make rebuilds only what changed (mtimes work).
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(c.join("lib.c"), "int twice(int x) { return x + x + 1; }\n").unwrap();
    let out = sh(&c, "make && ./app");
    assert!(out.contains("lib.o") && !out.contains("main.o:") && out.trim_end().ends_with("43"), "{out}");

    let r = m.path("rproj");
    fs::create_dir_all(r.join("src")).unwrap();
    fs::write(r.join("Cargo.toml"), "[package]\nname = \"onmount\"\nversion = \"0.1.0\"\nedition = \"2021\"\n")
        .unwrap();
    fs::write(r.join("src/main.rs"), "fn main() { println!(\"built on mmapfs\"); }\n").unwrap();
    let out = sh(&r, "CARGO_TARGET_DIR=target cargo run -q --offline");
    assert_eq!(out.trim(), "built on mmapfs");
}

#[test]
fn sqlite_in_wal_mode() {
    let m = Mounted::new(&[]);
    let out = sh(
        &m.mnt,
        "sqlite3 db.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);' && \
         for i in 1 2 3 4 5; do sqlite3 -cmd '.timeout 10000' db.sqlite \"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<2000) INSERT INTO t(v) SELECT hex(randomblob(32)) FROM c;\" & done; wait; \
         sqlite3 db.sqlite 'SELECT count(*) FROM t; PRAGMA integrity_check; PRAGMA journal_mode;'",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.ends_with(&["10000", "ok", "wal"]), "{out}");
    assert!(m.path("db.sqlite-shm").exists() || m.path("db.sqlite-wal").exists() || lines[0] == "wal");
}
