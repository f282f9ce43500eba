//! Man pages made from the clap definitions (clap_mangen), checked in under `man/` and
//! checked here to be current: a flag added without its page fails the test that calls
//! [`check_man_page`], which says how to write it anew.

use std::path::PathBuf;

/// Renders `cmd`'s man page for `section` and compares it with `man/NAME.SECTION`; with
/// `HPK_WRITE_MAN=1` it writes the file instead.
pub fn check_man_page(cmd: clap::Command, section: &str) {
    let name = cmd.get_name().to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .render(&mut page)
        .expect("render the man page");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../man")
        .join(format!("{name}.{section}"));
    if std::env::var_os("HPK_WRITE_MAN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &page).unwrap();
        return;
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == page,
        "{} is not the page of `{name} --help` any more: run `make man` (HPK_WRITE_MAN=1 \
         cargo test man_page) and commit it",
        path.display()
    );
}
