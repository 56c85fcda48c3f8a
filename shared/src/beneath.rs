//! Writing beneath a root directory without ever leaving it.
//!
//! A destination directory is shared ground: a volume, a NAS, the `--out`
//! folder of `asmr run`. Anyone who can write there can plant a symbolic
//! link (`manifest.jsonl -> ~/.bashrc`, `images -> /etc`), and a path
//! joined as text follows it: an append, a truncation or a whole copy would
//! land outside. So every file the downloader, the manifest, the contact
//! sheet and the local run write is reached from an open handle of its root
//! without following any link beneath it:
//!
//! - where the kernel has it (Linux 5.6+), one `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` resolves a directory;
//! - elsewhere (older kernels, sandboxes that refuse the call, other
//!   unixes) the same walk is made a component at a time, each opened with
//!   `O_NOFOLLOW | O_DIRECTORY` relative to the one before, missing ones
//!   made with `mkdirat`;
//! - the file itself is opened relative to its directory with `O_NOFOLLOW`,
//!   renamed and removed with `renameat` and `unlinkat`, never by path.
//!
//! The root itself is the operator's choice and may be a link. A link found
//! beneath it is refused with [`LinkRefused`], never followed; so is a file
//! to be written that is not a regular file, or one with a second name (a
//! hard link planted beside it points at someone else's file just as well).

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Why a path beneath a root was not written: a link, or something that is
/// not a plain file, where one was to be written.
#[derive(Debug, thiserror::Error)]
#[error("{path} {why}: refusing to write through it, since it could lead outside {root}")]
pub struct LinkRefused {
    /// The path refused.
    pub path: PathBuf,
    /// The root it is beneath.
    pub root: PathBuf,
    /// What it is.
    pub why: &'static str,
}

/// Whether `e` is a [`LinkRefused`]: a planted link, not a transient fault.
pub fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LinkRefused>())
}

/// What becomes of the files and directories a [`Root`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// As the process's umask allows (0777 / 0666 before it): delivered
    /// files, which their readers must be able to open.
    Shared,
    /// The owner's alone (0700 / 0600): state, databases, local buckets.
    Private,
}

impl Access {
    fn dir_mode(self) -> Mode {
        match self {
            Access::Shared => Mode::from_raw_mode(0o777),
            Access::Private => Mode::from_raw_mode(0o700),
        }
    }

    fn file_mode(self) -> Mode {
        match self {
            Access::Shared => Mode::from_raw_mode(0o666),
            Access::Private => Mode::from_raw_mode(0o600),
        }
    }
}

/// How a file beneath a root is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Reading an existing file.
    Read,
    /// Reading and appending, created when missing: the manifest, a partial
    /// copy. Refused when the file has another name.
    Append,
    /// A new file only, for writing: a temporary file.
    CreateNew,
}

/// A directory that files are written beneath, held open.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
    access: Access,
    walk_only: bool,
}

/// A directory beneath a [`Root`], reached without following a link, and
/// held open: what is done in it stays in it whatever is renamed above.
#[derive(Debug)]
pub struct Dir {
    root: PathBuf,
    access: Access,
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    /// Opens `path` as a root, creating it (and its parents) when missing.
    pub fn open(path: &Path, access: Access) -> io::Result<Self> {
        if !path.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, access.dir_mode().as_raw_mode());
            builder.create(path)?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            fd,
            access,
            walk_only: false,
        })
    }

    /// The same root, resolving by the component walk alone, as where the
    /// kernel has no `openat2`: for tests of that path.
    pub fn walking(mut self) -> Self {
        self.walk_only = true;
        self
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `rel` beneath the root (the root itself when `rel` is
    /// empty), made where missing when `create`.
    pub fn dir(&self, rel: &Path, create: bool) -> io::Result<Dir> {
        let parts = plain_components(rel)?;
        let path = self.path.join(rel);
        if parts.is_empty() {
            let fd = self.fd.try_clone()?;
            return Ok(self.at(path, fd));
        }
        #[cfg(target_os = "linux")]
        if !self.walk_only && openat2_works() {
            use rustix::fs::ResolveFlags;
            let resolved = rustix::fs::openat2(
                &self.fd,
                rel,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            );
            match resolved {
                Ok(fd) => return Ok(self.at(path, fd)),
                // A link on the way (or a way out of the root): the walk
                // names the component, and refuses it the same.
                Err(Errno::LOOP | Errno::XDEV) => {}
                // Something is missing: the walk makes it.
                Err(Errno::NOENT) if create => {}
                Err(Errno::NOSYS | Errno::PERM | Errno::OPNOTSUPP | Errno::INVAL) => {
                    OPENAT2_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(&parts, create)
    }

    /// [`Root::dir`] a component at a time.
    fn walk(&self, parts: &[&OsStr], create: bool) -> io::Result<Dir> {
        let mut fd = self.fd.try_clone()?;
        let mut path = self.path.clone();
        for part in parts {
            path.push(part);
            if create {
                match rustix::fs::mkdirat(&fd, *part, self.access.dir_mode()) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            fd = match rustix::fs::openat(
                &fd,
                *part,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(next) => next,
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    return Err(match is_link(&fd, part) {
                        true => self.refused(&path, "is a symbolic link"),
                        false => e.into(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(self.at(path, fd))
    }

    fn at(&self, path: PathBuf, fd: OwnedFd) -> Dir {
        Dir {
            root: self.path.clone(),
            access: self.access,
            path,
            fd,
        }
    }

    /// Opens the file `rel` beneath the root, its directory made where
    /// missing unless only reading.
    pub fn file(&self, rel: &Path, how: Open) -> io::Result<File> {
        let (dir, name) = split(rel)?;
        self.dir(dir, how != Open::Read)?.open(name, how)
    }

    fn refused(&self, path: &Path, why: &'static str) -> io::Error {
        refused(&self.path, path, why)
    }
}

fn refused(root: &Path, path: &Path, why: &'static str) -> io::Error {
    io::Error::other(LinkRefused {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
        why,
    })
}

impl Dir {
    /// This directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file `name` in this directory: never through a link, and
    /// for writing only a regular file.
    pub fn open(&self, name: &OsStr, how: Open) -> io::Result<File> {
        plain_name(name)?;
        let flags = match how {
            Open::Read => OFlags::RDONLY,
            Open::Append => OFlags::RDWR | OFlags::APPEND | OFlags::CREATE,
            // O_EXCL never follows a link either.
            Open::CreateNew => OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        } | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            // A planted FIFO must not hang the open.
            | OFlags::NONBLOCK;
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(&self.fd, name, flags, self.access.file_mode()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(refused(&self.root, &path, "is a symbolic link")),
            Err(e) => return Err(e.into()),
        };
        let stat = rustix::fs::fstat(&fd)?;
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        if how != Open::Read && kind != rustix::fs::FileType::RegularFile {
            return Err(refused(&self.root, &path, "is not a regular file"));
        }
        if how == Open::Append && stat.st_nlink > 1 {
            return Err(refused(&self.root, &path, "has another name (a hard link)"));
        }
        // Back to blocking I/O for the file's own reads and writes.
        let mut flags = rustix::fs::fcntl_getfl(&fd)?;
        flags.remove(OFlags::NONBLOCK);
        rustix::fs::fcntl_setfl(&fd, flags)?;
        Ok(File::from(fd))
    }

    /// What `name` in this directory is, without following it; `None` when
    /// there is nothing by that name.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
        plain_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to`, both in this directory. A link named `to` is
    /// replaced, not followed.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        plain_name(from)?;
        plain_name(to)?;
        rustix::fs::renameat(&self.fd, from, &self.fd, to)?;
        Ok(())
    }

    /// Removes the file `name` from this directory; nothing there is fine.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        plain_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the directory's entries durable (after a create or a rename).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }
}

/// Makes `path` (and any missing parent) a directory of the owner's alone,
/// 0700 whatever the umask, and takes group and other access away from one
/// that exists already (made by an earlier version with the umask's 0755).
pub fn private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Options that create a file of the owner's alone (0600); an existing one
/// keeps its mode (see [`private_file_mode`]).
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.mode(0o600);
    options
}

/// Takes group and other access away from the file at `path`, if there is
/// one.
pub fn private_file_mode(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o077 != 0 => {
            let mode = meta.permissions().mode() & 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `name` in `dir` is a symbolic link.
fn is_link(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink
    })
}

/// The components of `rel`: plain names only (no root, `.` or `..`).
fn plain_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

fn plain_name(name: &OsStr) -> io::Result<()> {
    match plain_components(Path::new(name))?.as_slice() {
        [_] => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file name", Path::new(name).display()),
        )),
    }
}

/// `rel` as its directory and its file name.
pub fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", rel.display()),
        )),
    }
}

/// Set once `openat2` has been refused (an old kernel, a sandbox): every
/// later resolution walks.
static OPENAT2_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
fn openat2_works() -> bool {
    !OPENAT2_REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// A root over a fresh directory, one resolving with `openat2` and one
    /// walking, with a directory outside it that links are planted to.
    fn roots() -> (tempfile::TempDir, [Root; 2]) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/victim"), b"precious\n").unwrap();
        let root = dir.path().join("root");
        let roots = [
            Root::open(&root, Access::Shared).unwrap(),
            Root::open(&root, Access::Shared).unwrap().walking(),
        ];
        (dir, roots)
    }

    fn refused(result: io::Result<impl std::fmt::Debug>) -> String {
        let e = result.expect_err("refused");
        assert!(is_refused(&e), "not a refusal: {e:?}");
        e.to_string()
    }

    #[test]
    fn files_and_directories_are_made_beneath_the_root() {
        let (_dir, roots) = roots();
        for root in &roots {
            let mut file = root
                .file(Path::new("images/j1/0.png"), Open::Append)
                .unwrap();
            file.write_all(b"png").unwrap();
            let dir = root.dir(Path::new("images/j1"), false).unwrap();
            dir.rename(OsStr::new("0.png"), OsStr::new("1.png"))
                .unwrap();
            let mut text = String::new();
            root.file(Path::new("images/j1/1.png"), Open::Read)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.starts_with("png"));
            dir.remove(OsStr::new("1.png")).unwrap();
            assert!(dir.stat(OsStr::new("1.png")).unwrap().is_none());
        }
    }

    #[test]
    fn a_planted_link_is_refused_at_every_level_and_nothing_is_written_outside() {
        let (dir, roots) = roots();
        let outside = dir.path().join("outside");
        let base = dir.path().join("root");
        std::fs::create_dir_all(base.join("videos")).unwrap();
        symlink(&outside, base.join("images")).unwrap();
        symlink(outside.join("victim"), base.join("manifest.jsonl")).unwrap();
        symlink(
            outside.join("victim"),
            base.join("videos/.0.mp4.7.asmr-partial"),
        )
        .unwrap();
        symlink(outside.join("new"), base.join("dangling")).unwrap();
        for root in &roots {
            let says = refused(root.file(Path::new("images/j1/0.png"), Open::Append));
            assert!(says.contains("root/images is a symbolic link"), "{says}");
            refused(root.dir(Path::new("images"), true));
            refused(root.file(Path::new("manifest.jsonl"), Open::Append));
            refused(root.file(Path::new("videos/.0.mp4.7.asmr-partial"), Open::Append));
            refused(root.file(Path::new("dangling"), Open::Append));
            refused(
                root.file(Path::new("dangling"), Open::CreateNew)
                    .map_err(|e| {
                        // O_EXCL reports an existing link as EEXIST: not a write
                        // through it either way.
                        match e.kind() {
                            io::ErrorKind::AlreadyExists => io::Error::other(LinkRefused {
                                path: PathBuf::new(),
                                root: PathBuf::new(),
                                why: "exists",
                            }),
                            _ => e,
                        }
                    }),
            );
        }
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"precious\n"
        );
        let left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["victim"], "nothing was made outside");
    }

    #[test]
    fn a_hard_link_or_a_fifo_is_not_written() {
        let (dir, roots) = roots();
        let base = dir.path().join("root");
        std::fs::hard_link(
            dir.path().join("outside/victim"),
            base.join("manifest.jsonl"),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            base.join("pipe"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        for root in &roots {
            let says = refused(root.file(Path::new("manifest.jsonl"), Open::Append));
            assert!(says.contains("hard link"), "{says}");
            let says = refused(root.file(Path::new("pipe"), Open::Append));
            assert!(says.contains("not a regular file"), "{says}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("outside/victim")).unwrap(),
            b"precious\n"
        );
    }

    #[test]
    fn private_roots_are_the_owners_alone_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&dir.path().join("state/objects"), Access::Private).unwrap();
        root.file(Path::new("out/images/j/0.png"), Open::Append)
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("state/objects")), 0o700);
        assert_eq!(mode(&dir.path().join("state/objects/out/images")), 0o700);
        assert_eq!(
            mode(&dir.path().join("state/objects/out/images/j/0.png")),
            0o600
        );
    }
}
