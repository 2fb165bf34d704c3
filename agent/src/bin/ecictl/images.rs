//! Image and image-cache commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use eci_api::v1::image_caches_client::ImageCachesClient;
use eci_api::v1::images_client::ImagesClient;
use eci_api::v1::*;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::output::{self, Table};

#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// Pull an image from its registry, one progress bar per layer.
    Pull {
        image: String,
        /// Registry username (the registry is the one the image names).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the password from standard input (never from the command line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List images.
    Ls,
    /// Remove an image no group uses and no cache pins.
    Rm { image: String },
    /// Import an OCI image layout archive (tar).
    Import {
        file: PathBuf,
        /// Reference for the image when the archive names none.
        #[arg(long)]
        reference: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Create a named set of pinned images (answers Creating; see `cache get`).
    Create {
        name: String,
        #[arg(long = "image", required = true)]
        images: Vec<String>,
        /// Delete the cache this many days after creation (0 keeps it).
        #[arg(long, default_value_t = 0)]
        retention_days: u32,
    },
    /// List caches.
    Ls,
    /// Show one cache: status, message, images.
    Get {
        name: String,
        #[arg(short = 'o', long = "output")]
        output: Option<output::Format>,
    },
    /// Delete a cache (its images are no longer pinned).
    Rm { name: String },
}

fn image_table(images: &[Image]) -> String {
    let mut t = Table::new(&["REFERENCE", "DIGEST", "SIZE", "LAYERS", "PLATFORM"]);
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest).to_string();
        let refs = if i.references.is_empty() {
            "<none>".into()
        } else {
            i.references.join(",")
        };
        t.row(vec![
            refs,
            short,
            output::bytes(i.size_bytes),
            i.layer_count.to_string(),
            i.platform.clone(),
        ]);
    }
    t.render()
}

/// `ecictl images pull`: one bar per layer on a terminal, one line per layer state
/// otherwise.
async fn pull(
    c: &mut ImagesClient<Channel>,
    image: String,
    username: Option<String>,
    password_stdin: bool,
) -> Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::collections::HashMap;
    use std::io::IsTerminal;

    let mut credentials = vec![];
    if password_stdin {
        let mut password = String::new();
        tokio::io::stdin()
            .read_to_string(&mut password)
            .await
            .context("reading the password from standard input")?;
        let server = registry_of(&image);
        credentials.push(RegistryCredential {
            server,
            username: username.unwrap_or_default(),
            password: password.trim_end_matches(['\r', '\n']).to_string(),
        });
    }
    let req = PullImageRequest {
        image: image.clone(),
        credentials,
    };
    let tty = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix} {wide_bar} {bytes}/{total_bytes} {msg}")
        .context("progress style")?;
    let mut by_layer: HashMap<String, (ProgressBar, String)> = HashMap::new();
    let mut stream = c.pull(req).await?.into_inner();
    while let Some(p) = stream.message().await? {
        if let Some(img) = p.image {
            bars.clear().ok();
            println!("pulled {image} ({})", img.digest);
            continue;
        }
        let short = p
            .layer_digest
            .split(':')
            .nth(1)
            .and_then(|h| h.get(..12))
            .unwrap_or(&p.layer_digest)
            .to_string();
        let (bar, last) = by_layer.entry(p.layer_digest.clone()).or_insert_with(|| {
            let b = bars.add(ProgressBar::new(p.total_bytes));
            b.set_style(style.clone());
            b.set_prefix(short.clone());
            (b, String::new())
        });
        bar.set_position(p.downloaded_bytes.min(p.total_bytes));
        bar.set_message(p.state.clone());
        if matches!(p.state.as_str(), "Done" | "AlreadyExists") {
            bar.finish();
        }
        if !tty && *last != p.state {
            eprintln!(
                "{short} {} {}/{}",
                p.state, p.downloaded_bytes, p.total_bytes
            );
        }
        *last = p.state;
    }
    Ok(())
}

/// The registry host an image reference names (`docker.io` when none).
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.into(),
        _ => "docker.io".into(),
    }
}

pub async fn images(ch: Channel, cmd: ImagesCmd) -> Result<ExitCode> {
    let mut c = ImagesClient::new(ch);
    match cmd {
        ImagesCmd::Pull {
            image,
            username,
            password_stdin,
        } => pull(&mut c, image, username, password_stdin).await?,
        ImagesCmd::Ls => {
            let list = c.list(ListImagesRequest {}).await?.into_inner();
            print!("{}", image_table(&list.images));
        }
        ImagesCmd::Rm { image } => {
            c.remove(RemoveImageRequest {
                image: image.clone(),
            })
            .await?;
            println!("image {image} removed");
        }
        ImagesCmd::Import { file, reference } => {
            let mut f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let (tx, rx) = mpsc::channel(8);
            tx.send(ImportImageRequest {
                reference: reference.unwrap_or_default(),
                data: vec![],
            })
            .await?;
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    if tx
                        .send(ImportImageRequest {
                            reference: String::new(),
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            });
            let res = c.import(ReceiverStream::new(rx)).await;
            reader
                .await?
                .with_context(|| format!("reading {}", file.display()))?;
            print!("{}", image_table(&res?.into_inner().images));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cache(ch: Channel, cmd: CacheCmd) -> Result<ExitCode> {
    let mut c = ImageCachesClient::new(ch);
    match cmd {
        CacheCmd::Create {
            name,
            images,
            retention_days,
        } => {
            let req = CreateImageCacheRequest {
                name,
                images,
                retention_days,
                credentials: vec![],
            };
            let cache = c.create(req).await?.into_inner();
            println!("cache/{} {}", cache.name, cache.status);
        }
        CacheCmd::Ls => {
            let list = c.list(ListImageCachesRequest {}).await?.into_inner();
            let mut t = Table::new(&["NAME", "STATUS", "IMAGES", "SIZE", "AGE"]);
            for k in list.caches {
                t.row(vec![
                    k.name,
                    k.status,
                    k.images.join(","),
                    output::bytes(k.size_bytes),
                    output::age(&k.created_at),
                ]);
            }
            print!("{}", t.render());
        }
        CacheCmd::Get { name, output } => {
            let k = c.get(GetImageCacheRequest { name }).await?.into_inner();
            match output {
                Some(f @ (output::Format::Json | output::Format::Yaml)) => {
                    output::print_structured(&k, f)?
                }
                _ => {
                    println!("Name:       {}", k.name);
                    println!("Status:     {}", k.status);
                    if !k.message.is_empty() {
                        println!("Message:    {}", k.message);
                    }
                    println!(
                        "Created:    {} ({} ago)",
                        k.created_at,
                        output::age(&k.created_at)
                    );
                    let keep = match k.retention_days {
                        0 => "kept until deleted".to_string(),
                        d => format!("{d} day(s)"),
                    };
                    println!("Retention:  {keep}");
                    println!("Size:       {}", output::bytes(k.size_bytes));
                    println!("Images:");
                    for i in &k.images {
                        println!("  {i}");
                    }
                }
            }
        }
        CacheCmd::Rm { name } => {
            c.delete(DeleteImageCacheRequest { name: name.clone() })
                .await?;
            println!("cache/{name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
