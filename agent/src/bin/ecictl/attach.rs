//! `ecictl attach [-i] [-t] NAME [-c C]`: the main process's output, and with `-i` its
//! input. With `-it` the local terminal is raw and ctrl-p ctrl-q detaches (as
//! `docker attach` / `kubectl attach`); ctrl-c then goes to the container. Without
//! `-t`, ctrl-c or the end of input detaches. Detaching never stops the container.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use eci_api::v1::containers_client::ContainersClient;
use eci_api::v1::*;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::streams::{RawMode, terminal_size};

/// The detach sequence with `-it`: ctrl-p, ctrl-q.
const DETACH: [u8; 2] = [0x10, 0x11];

/// Splits input at the detach sequence. `held` is a ctrl-p waiting for the next byte.
/// Returns the bytes to send and whether the sequence was typed.
fn scan(held: &mut bool, input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(input.len() + 1);
    for &b in input {
        if *held {
            *held = false;
            if b == DETACH[1] {
                return (out, true);
            }
            out.push(DETACH[0]);
        }
        if b == DETACH[0] {
            *held = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

/// What ended the input side.
enum Ended {
    Detached,
    Eof,
}

pub async fn attach(
    ch: Channel,
    group: String,
    container: String,
    stdin: bool,
    tty: bool,
) -> Result<ExitCode> {
    let (tx, rx) = mpsc::channel::<AttachRequest>(16);
    tx.send(AttachRequest {
        group,
        container,
        want_stdin: stdin,
        resize: tty.then(terminal_size).flatten(),
        ..Default::default()
    })
    .await?;
    let mut responses = ContainersClient::new(ch)
        .attach(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let raw = if tty && stdin {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (done_tx, mut done) = mpsc::channel::<Ended>(1);
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            let mut held = false;
            loop {
                let n = match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = done_tx.send(Ended::Eof).await;
                        return;
                    }
                    Ok(n) => n,
                };
                let (data, detach) = if tty {
                    scan(&mut held, &buf[..n])
                } else {
                    (buf[..n].to_vec(), false)
                };
                if !data.is_empty() {
                    let msg = AttachRequest {
                        stdin: data,
                        ..Default::default()
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                if detach {
                    let _ = done_tx.send(Ended::Detached).await;
                    return;
                }
            }
        });
    }
    if tty {
        crate::streams::forward_resizes(tx.clone(), |size| AttachRequest {
            resize: Some(size),
            ..Default::default()
        });
    }
    let mut code = 0;
    loop {
        tokio::select! {
            r = responses.message() => {
                let Some(r) = r? else { break };
                if !r.stdout.is_empty() {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&r.stdout)?;
                    o.flush()?;
                }
                if !r.stderr.is_empty() {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&r.stderr)?;
                    e.flush()?;
                }
                if !r.notice.is_empty() {
                    let nl = if raw.is_some() { "\r\n" } else { "\n" };
                    eprint!("{nl}ecictl: {}{nl}", r.notice);
                }
                if let Some(c) = r.exit_code {
                    code = c;
                }
            }
            ended = done.recv() => {
                // Detach: the container runs on; closing the stream is all it takes.
                drop(raw);
                if let Some(Ended::Detached) = ended {
                    eprintln!("\r\necictl: detached; the container keeps running");
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ = tokio::signal::ctrl_c(), if raw.is_none() => {
                eprintln!("\necictl: detached; the container keeps running");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    drop(tx);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_p_ctrl_q_detaches_and_a_lone_ctrl_p_passes() {
        let mut held = false;
        assert_eq!(scan(&mut held, b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(scan(&mut held, b"a\x10b"), (b"a\x10b".to_vec(), false));
        assert_eq!(scan(&mut held, b"x\x10"), (b"x".to_vec(), false));
        assert!(held);
        assert_eq!(scan(&mut held, b"\x11rest"), (Vec::new(), true));
        held = false;
        assert_eq!(scan(&mut held, b"\x10\x11"), (Vec::new(), true));
    }
}
