//! `trainer data`: import, fetch, verify, stats, and refusal of bad input.

mod common;

use common::*;
use std::io::Write;

fn manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn directory_and_archive_imports_agree() {
    let tmp = tempdir();
    let root = tmp.path();
    let tree = root.join("tree");
    write_image_folder(&tree, Some("train"), 10, 6, "png");
    write_image_folder(&tree, Some("test"), 10, 2, "jpg");
    std::fs::write(tree.join("README.txt"), "not an image").unwrap();
    let a = root.join("a");
    let out =
        ok(run(root, &["data", "import", tree.to_str().unwrap(), "--out", a.to_str().unwrap(), "--val-size", "20"]));
    assert!(out.contains("1 files that are not images were ignored"), "{out}");
    let archive = root.join("tree.tar.gz");
    tar_gz(&tree, &archive);
    let b = root.join("b");
    ok(run(root, &["data", "import", archive.to_str().unwrap(), "--out", b.to_str().unwrap(), "--val-size", "20"]));
    let (ma, mb) = (manifest(&a), manifest(&b));
    assert_eq!(ma["digest"], mb["digest"], "same images, same digest");
    assert_eq!(ma["splits"]["train"]["count"], 60);
    assert_eq!(ma["splits"]["test"]["count"], 20);
    assert_eq!(ma["validation"]["size"], 20);
    assert_eq!(ma["classes"][0], "airplane");
    let v = ok(run(root, &["data", "verify", a.to_str().unwrap()]));
    assert!(v.contains("OK"), "{v}");
    let s = ok(run(root, &["data", "stats", a.to_str().unwrap()]));
    assert!(s.contains("channel mean") && s.contains("truck") && s.contains("test: 20 images"), "{s}");

    // A different validation seed is a different split of the same data version.
    let c = root.join("c");
    ok(run(
        root,
        &[
            "data",
            "import",
            tree.to_str().unwrap(),
            "--out",
            c.to_str().unwrap(),
            "--val-size",
            "20",
            "--split-seed",
            "5",
        ],
    ));
    assert_eq!(manifest(&c)["digest"], ma["digest"]);

    // Tampering with the stored pixels is caught by verify.
    let train = a.join("train.safetensors");
    let mut bytes = std::fs::read(&train).unwrap();
    let middle = bytes.len() / 2; // inside the pixel data
    bytes[middle] ^= 0xff;
    std::fs::write(&train, bytes).unwrap();
    fails_with(run(root, &["data", "verify", a.to_str().unwrap()]), &["digest mismatch"]);
    // An existing dataset is not overwritten without --force.
    fails_with(
        run(root, &["data", "import", tree.to_str().unwrap(), "--out", b.to_str().unwrap()]),
        &["already exists", "--force"],
    );
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let tmp = tempdir();
    let root = tmp.path();
    let out = root.join("out/ds");
    let out_s = out.to_str().unwrap();
    let before = |p: &std::path::Path| entries(p.parent().unwrap());

    // A missing archive.
    fails_with(run(root, &["data", "import", "nope.tar.gz", "--out", out_s]), &["nope.tar.gz"]);
    assert!(!out.exists());

    // A corrupt (truncated) archive.
    let tree = root.join("tree");
    write_image_folder(&tree, None, 3, 30, "png");
    let archive = root.join("t.tar.gz");
    tar_gz(&tree, &archive);
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(run(root, &["data", "import", archive.to_str().unwrap(), "--out", out_s]), &["t.tar.gz"]);
    assert!(!out.exists());

    // An image that does not decode.
    std::fs::write(tree.join("bird/0007.png"), b"\x89PNG but not really").unwrap();
    fails_with(
        run(root, &["data", "import", tree.to_str().unwrap(), "--out", out_s]),
        &["bird/0007.png", "cannot decode"],
    );
    assert!(!out.exists());
    synthetic_image(2, 7).save(tree.join("bird/0007.png")).unwrap();

    // A class folder with no images.
    std::fs::create_dir_all(tree.join("dog")).unwrap();
    fails_with(run(root, &["data", "import", tree.to_str().unwrap(), "--out", out_s]), &["dog", "has no images"]);
    assert!(!out.exists());
    std::fs::remove_dir(tree.join("dog")).unwrap();

    // An archive with no images at all, and an unknown layout.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(run(root, &["data", "import", empty.to_str().unwrap(), "--out", out_s]), &["contains no images"]);
    let deep = root.join("deep");
    std::fs::create_dir_all(deep.join("a/b/c/d")).unwrap();
    std::fs::create_dir_all(deep.join("x")).unwrap();
    synthetic_image(0, 0).save(deep.join("a/b/c/d/1.png")).unwrap();
    synthetic_image(0, 1).save(deep.join("x/2.png")).unwrap();
    fails_with(run(root, &["data", "import", deep.to_str().unwrap(), "--out", out_s]), &["unexpected layout"]);

    // A validation split larger than a class.
    fails_with(
        run(root, &["data", "import", tree.to_str().unwrap(), "--out", out_s, "--val-size", "300"]),
        &["validation"],
    );
    assert!(!out.exists());
    // No temporary directories were left next to the output.
    assert!(before(&out).is_empty(), "left behind: {:?}", before(&out));

    // And the good tree imports.
    ok(run(root, &["data", "import", tree.to_str().unwrap(), "--out", out_s, "--val-size", "9"]));
    // Loading something that is not a dataset.
    fails_with(run(root, &["data", "verify", tree.to_str().unwrap()]), &["not a dataset directory"]);
}

/// Writes a CIFAR-10 binary archive with `per_batch` records in each of the five
/// training batches and in the test batch. Record i of batch b has label (i + b) % 10 and
/// planes filled with R = label, G = 100 + i, B = 200.
fn cifar_binary(path: &std::path::Path, per_batch: usize) {
    let f = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), data).unwrap();
    };
    let batch = |b: usize| -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..per_batch {
            let label = ((i + b) % 10) as u8;
            v.push(label);
            v.extend(std::iter::repeat_n(label, 1024));
            v.extend(std::iter::repeat_n((100 + i) as u8, 1024));
            v.extend(std::iter::repeat_n(200u8, 1024));
        }
        v
    };
    for b in 1..=5 {
        add(&format!("data_batch_{b}.bin"), &batch(b));
    }
    add("test_batch.bin", &batch(0));
    add("batches.meta.txt", CLASSES.join("\n").as_bytes());
    t.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn fetch_reads_the_official_binary_layout() {
    let tmp = tempdir();
    let root = tmp.path();
    let archive = root.join("mirror.tar.gz");
    cifar_binary(&archive, 20);
    let out = root.join("data/official");
    let t = ok(run(
        root,
        &["data", "fetch", "--file", archive.to_str().unwrap(), "--out", out.to_str().unwrap(), "--val-size", "10"],
    ));
    assert!(t.contains("not checked"), "{t}");
    let m = manifest(&out);
    assert_eq!(m["splits"]["train"]["count"], 100);
    assert_eq!(m["splits"]["test"]["count"], 20);
    assert_eq!(m["source"]["kind"], "cifar10-binary");
    // Planes are converted to interleaved RGB, records sorted by batch file.
    let bytes = std::fs::read(out.join("train.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor("images").unwrap();
    let labels = st.tensor("labels").unwrap();
    assert_eq!(images.shape(), &[100, 32, 32, 3]);
    assert_eq!(&images.data()[..6], &[1, 100, 200, 1, 100, 200]);
    assert_eq!(labels.data()[0], 1);
    assert_eq!(&images.data()[3072 * 3..3072 * 3 + 3], &[4, 103, 200]);

    // A wrong expected checksum is refused, and so is a corrupt "official" file.
    let out2 = root.join("data/other");
    let out2_s = out2.to_str().unwrap();
    fails_with(
        run(root, &["data", "fetch", "--file", archive.to_str().unwrap(), "--out", out2_s, "--md5", "00"]),
        &["md5"],
    );
    let official = root.join("cifar-10-binary.tar.gz");
    std::fs::copy(&archive, &official).unwrap();
    fails_with(
        run(root, &["data", "fetch", "--file", official.to_str().unwrap(), "--out", out2_s]),
        &["md5", "c32a1d4ab5d03f1284b67883e8d87530"],
    );
    assert!(!out2.exists());
    // Not a CIFAR archive at all.
    let tree = root.join("tree");
    write_image_folder(&tree, None, 2, 2, "png");
    let other = root.join("other.tar.gz");
    tar_gz(&tree, &other);
    fails_with(run(root, &["data", "fetch", "--file", other.to_str().unwrap(), "--out", out2_s]), &["data_batch"]);
    assert!(!out2.exists());
}

/// Serves `body` to HTTP GET requests on a loopback port, `count` times, and returns
/// the URL.
fn serve(body: Vec<u8>, count: usize) -> String {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/mirror/cifar-10-binary-copy.tar.gz")
}

#[test]
fn fetch_downloads_from_a_url() {
    let tmp = tempdir();
    let root = tmp.path();
    let archive = root.join("a.tar.gz");
    cifar_binary(&archive, 10);
    let bytes = std::fs::read(&archive).unwrap();
    let md5 = {
        use md5::Digest;
        let d = md5::Md5::digest(&bytes);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let url = serve(bytes, 2);
    let out = root.join("data/dl");
    let t = ok(run(
        root,
        &["data", "fetch", "--url", &url, "--md5", &md5, "--out", out.to_str().unwrap(), "--val-size", "10"],
    ));
    assert!(t.contains("md5 verified"), "{t}");
    assert_eq!(manifest(&out)["splits"]["train"]["count"], 50);
    assert_eq!(manifest(&out)["source"]["location"], url.as_str());
    // The download directory is cleaned up; only the dataset remains.
    assert_eq!(entries(&root.join("data")), vec!["dl".to_string()]);
    // A server that is not there: a clear error, nothing left.
    let out2 = root.join("data/none");
    fails_with(
        run(root, &["data", "fetch", "--url", "http://127.0.0.1:9/x.tar.gz", "--out", out2.to_str().unwrap()]),
        &["cannot download", "127.0.0.1:9"],
    );
    assert_eq!(entries(&root.join("data")), vec!["dl".to_string()]);
}
