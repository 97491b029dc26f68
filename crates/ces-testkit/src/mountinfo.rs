//! How a container's `/` is mounted, read from inside it.

/// A shell command (busybox's `grep` will do) that prints the line of
/// `/proc/self/mountinfo` for the container's `/`.
pub const ROOT_MOUNT_LINE: &str = r#"grep -E "^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / " /proc/self/mountinfo"#;

/// The file system type and the super options of a `mountinfo` line (what
/// follows its ` - `: type, source, options).
pub fn fs_and_options(line: &str) -> Option<(&str, &str)> {
    let (_, fs) = line.split_once(" - ")?;
    let mut fields = fs.split(' ');
    let fs_type = fields.next()?;
    let options = fields.nth(1)?;
    Some((fs_type, options.trim_end()))
}

/// Whether a `mountinfo` line is an overlay whose upper layer is never
/// synced: `volatile` (newer kernels show it as `fsync=volatile`).
pub fn is_volatile_overlay(line: &str) -> bool {
    fs_and_options(line).is_some_and(|(fs_type, options)| {
        fs_type == "overlay" && options.split(',').any(|o| o == "volatile" || o == "fsync=volatile")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lines() {
        let volatile = "1466 1465 0:80 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,uuid=on,fsync=volatile\n";
        assert_eq!(fs_and_options(volatile).map(|(t, _)| t), Some("overlay"));
        assert!(is_volatile_overlay(volatile));
        assert!(is_volatile_overlay("1 2 0:8 / / rw - overlay overlay rw,volatile,lowerdir=/l"));
        assert!(!is_volatile_overlay("1 2 0:8 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/u"));
        assert!(!is_volatile_overlay("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,volatile"));
        assert!(!is_volatile_overlay(""));
    }
}
