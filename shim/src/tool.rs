//! Running the field's tools (skopeo, umoci, runc, ...) as subprocesses, with their
//! complaint turned into one line.

use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, Result};
use tracing::debug;

/// Renders a command the way a user would type it (for --debug).
pub fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with output captured; fails with the tool's last stderr line.
pub fn output(mut cmd: Command, what: &str) -> Result<Output> {
    debug!(command = %render(&cmd), "running");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        anyhow!(
            "{what}: cannot run {}: {e}",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if !out.status.success() {
        return Err(anyhow!("{what}: {}", last_line(&out.stderr)));
    }
    Ok(out)
}

/// The last non-empty line of a tool's stderr, which is where Go tools put the reason.
pub fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("failed without a message");
    // Go tools wrap their message in log prefixes (logrus: time=... level=fatal
    // msg="..."): keep the message.
    if let Some(start) = line.find("msg=\"") {
        let msg = &line[start + 5..];
        let msg = msg.strip_suffix('"').unwrap_or(msg);
        return msg.replace("\\\"", "\"");
    }
    line.trim_start_matches("FATA[0000] ")
        .trim_start_matches("Error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_messages_become_one_line() {
        let skopeo = br#"time="2026-11-25T17:19:55Z" level=fatal msg="pinging container registry 127.0.0.1:5000: Get \"http://127.0.0.1:5000/v2/\": connect: connection refused""#;
        assert_eq!(
            last_line(skopeo),
            r#"pinging container registry 127.0.0.1:5000: Get "http://127.0.0.1:5000/v2/": connect: connection refused"#
        );
        assert_eq!(last_line(b"x\nError: bad thing\n\n"), "bad thing");
        assert_eq!(last_line(b""), "failed without a message");
    }
}
