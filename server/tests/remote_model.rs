//! `cifar-serve --model s3://...`: a model pushed to a real S3 API (`moto_server` from
//! PyPI, named in `CIFAR_MOTO` by scripts/test.sh) is downloaded, checked against its
//! hash and served; a corrupted object is refused before the server listens.

mod common;
#[path = "../../remote/testing/moto.rs"]
mod moto;

use std::process::Stdio;

use common::*;
use serde_json::Value;

#[test]
fn serves_a_model_from_s3_and_refuses_a_corrupted_one() {
    let Some(exe) = moto::moto_exe() else {
        eprintln!("skipped: CIFAR_MOTO is not set (scripts/test.sh installs moto and sets it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let s3 = moto::Moto::start(&exe, tmp.path());
    s3.create_bucket("models");
    let env = s3.env();
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let model = fixture("models/tiny-f32.cifar");
    let remote = cifar_remote::Remote::open("s3://models/prod").unwrap();
    let url = cifar_remote::push_model(&remote, &model, false).unwrap();

    let cache = tmp.path().join("cache");
    let mut env: Vec<(&str, String)> = env.clone();
    env.push(("CIFAR_CACHE_DIR", cache.display().to_string()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let server = Server::start_with(dir, std::path::Path::new(&url), &[], Stdio::null(), Stdio::from(log), &pairs);
    let image = &sample_images()[0];
    let expected = sdk_logits(&model, &rgb8(image), 1);
    let v: Value =
        client().post(server.at("/v1/classify")).body(std::fs::read(image).unwrap()).send().unwrap().json().unwrap();
    let best = (0..10).max_by(|&a, &b| expected[a].total_cmp(&expected[b])).unwrap();
    assert_eq!(v["results"][0]["top"][0]["class"], best, "{v}");
    let (status, meta) = server.get_json("/v2/models/model");
    assert_eq!(status, 200, "{meta}");
    assert!(server.log_text().contains("sha256 verified"), "{}", server.log_text());
    drop(server);

    // The stored object corrupted and the cache empty: the server refuses to start.
    std::fs::remove_dir_all(&cache).unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[100] ^= 1;
    let key = url.rsplit('/').next().unwrap();
    remote.put(&format!("models/{key}"), bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cifar-serve"))
        .args(["--model", &url, "--addr", "127.0.0.1:0"])
        .envs(pairs.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("corrupt"), "{text}");
    assert!(!text.contains(&s3.secret), "{text}");
    assert!(!cache.join("models").join(key).exists());
}
