//! Malformed and hostile model files: each gets a specific error, none panics.

mod common;

use cifar_sdk::artifact::*;
use cifar_sdk::{Error, Model, ModelOptions, QuantParams};
use common::*;
use rand::{Rng, SeedableRng};

fn open(bytes: &[u8]) -> Result<std::sync::Arc<Model>, Error> {
    Model::from_bytes(bytes, &ModelOptions { device: cifar_sdk::DevicePolicy::Cpu, threads: 1, max_batch: 2 })
}

fn f32_base() -> ArtifactWriter {
    let g = zoo_graph();
    f32_writer(&g, &random_weights(&g, 21))
}

fn int8_base() -> ArtifactWriter {
    let g = zoo_graph();
    int8_writer(&g, &random_weights(&g, 22), &random_images(4, 23), 4)
}

/// Splits a file into its header JSON and data.
fn parts(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

/// A file from a header and data, the header padded to 8 bytes as the writer does.
fn join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    join_raw(&h, data)
}

fn join_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The file with its header JSON edited (the checksum is left as it was).
fn edit_header(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (mut h, data) = parts(bytes);
    f(&mut h);
    join(&serde_json::to_vec(&h).unwrap(), &data)
}

/// A writer edited, written without validation (valid checksum, bad content).
fn edited(mut w: ArtifactWriter, f: impl FnOnce(&mut ArtifactWriter)) -> Vec<u8> {
    f(&mut w);
    w.to_bytes_unchecked().unwrap()
}

fn graph_edit(f: impl FnOnce(&mut Graph)) -> Vec<u8> {
    edited(f32_base(), |w| f(&mut w.metadata.graph))
}

fn node_mut<'a>(g: &'a mut Graph, name: &str) -> &'a mut Node {
    g.nodes.iter_mut().find(|n| n.name == name).unwrap()
}

fn conv_mut<'a>(g: &'a mut Graph, name: &str) -> &'a mut Conv2d {
    match &mut node_mut(g, name).op {
        Op::Conv2d(c) => c,
        _ => unreachable!(),
    }
}

/// With `CIFAR_MALFORMED_DIR=<dir>`, every case is also written to `<dir>/<case>.cifar`
/// (how `fixtures/malformed/` is made).
fn save_case(bytes: &[u8], what: &str) {
    if let Some(dir) = std::env::var_os("CIFAR_MALFORMED_DIR") {
        let slug: String =
            what.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{slug}.cifar")), bytes).unwrap();
    }
}

#[track_caller]
fn expect(bytes: &[u8], check: impl Fn(&Error) -> bool, what: &str) {
    save_case(bytes, what);
    match open(bytes) {
        Ok(_) => panic!("{what}: the malformed file was accepted"),
        Err(e) => assert!(check(&e), "{what}: unexpected error: {e}"),
    }
}

fn msg(e: &Error, s: &str) -> bool {
    e.to_string().contains(s)
}

#[test]
fn the_valid_files_open() {
    open(&f32_base().to_bytes().unwrap()).unwrap();
    open(&int8_base().to_bytes().unwrap()).unwrap();
}

#[test]
fn container_errors() {
    let good = f32_base().to_bytes().unwrap();
    let is_container = |e: &Error| matches!(e, Error::Container(_));
    expect(&[], is_container, "empty file");
    expect(&good[..7], is_container, "7 bytes");
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect(&huge, is_container, "header length u64::MAX");
    let mut long = good.clone();
    long[..8].copy_from_slice(&((good.len() as u64) + 10).to_le_bytes());
    expect(&long, is_container, "header longer than the file");
    expect(&join(b"{not json at all", &[]), is_container, "header is not JSON");
    expect(&join(b"[1, 2, 3]", &[]), is_container, "header is not an object");
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    expect(&trailing, is_container, "trailing bytes");
    let bad_offsets = edit_header(&good, |h| h["c1.bias"]["data_offsets"] = serde_json::json!([0, 99_999_999]));
    expect(&bad_offsets, is_container, "offsets outside the data");
    let unknown_dtype = edit_header(&good, |h| h["c1.bias"]["dtype"] = "Q4".into());
    expect(&unknown_dtype, is_container, "unknown dtype");
    let overflow =
        edit_header(&good, |h| h["c1.bias"]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40, 1u64 << 40]));
    expect(&overflow, is_container, "shape that overflows");
    // Truncated at many offsets: header, data, last byte.
    for cut in [8, 9, 20, 100, good.len() / 3, good.len() / 2, good.len() - 100, good.len() - 1] {
        expect(&good[..cut], is_container, &format!("truncated to {cut} bytes"));
    }
}

/// Depthwise layers store 8-bit codes (their op sums exactly in f32: format version 3);
/// the tile kernels' layers keep 7 bits, and -128 is refused everywhere.
#[test]
fn depthwise_layers_take_8_bit_codes() {
    let dw = Op::Conv2d(Conv2d {
        out_channels: 3,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        groups: 3,
        act: Activation::Relu,
    });
    let node = |name: &str, input: &str, op| Node { name: name.into(), inputs: vec![input.into()], op, quant: None };
    let mut g = zoo_graph();
    g.nodes = vec![
        node("dw", "input", dw),
        node("gp", "dw", Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })),
        node("head", "gp", Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    let w = random_weights(&g, 71);
    let base = int8_writer(&g, &w, &random_images(2, 72), 2);
    let codes = |name: &str| base.tensors[name].bytes.iter().map(|&b| (b as i8).unsigned_abs()).max().unwrap();
    assert_eq!((codes("dw.weight"), codes("head.weight")), (127, 64));
    open(&base.to_bytes().unwrap()).unwrap();
    let minus_128 = edited(base, |w| {
        let mut t = w.tensors["dw.weight"].clone();
        t.bytes[0] = 0x80;
        w.insert("dw.weight", t);
    });
    expect(
        &minus_128,
        |e| matches!(e, Error::Tensor { name, .. } if name == "dw.weight") && msg(e, "outside -127..=127"),
        "a depthwise weight code of -128",
    );
}

#[test]
fn metadata_errors() {
    let good = f32_base().to_bytes().unwrap();
    let no_meta = edit_header(&good, |h| {
        h.as_object_mut().unwrap().remove("__metadata__");
    });
    expect(&no_meta, |e| matches!(e, Error::Metadata { key, .. } if key == "__metadata__"), "no metadata");
    let format = edit_header(&good, |h| h["__metadata__"]["format"] = "onnx".into());
    expect(&format, |e| matches!(e, Error::Metadata { key, .. } if key == "format"), "wrong format name");
    let version = edit_header(&good, |h| h["__metadata__"]["format_version"] = "4".into());
    expect(
        &version,
        |e| matches!(e, Error::UnsupportedVersion { found, .. } if found == "4") && msg(e, "update cifar-sdk"),
        "newer version",
    );
    let older = edit_header(&good, |h| h["__metadata__"]["format_version"] = "1".into());
    expect(
        &older,
        |e| matches!(e, Error::UnsupportedVersion { found, .. } if found == "1") && msg(e, "recompile"),
        "older version",
    );
    let no_sum = edit_header(&good, |h| {
        h["__metadata__"].as_object_mut().unwrap().remove("checksum");
    });
    expect(&no_sum, |e| matches!(e, Error::Metadata { key, .. } if key == "checksum"), "missing checksum");
    let mut flipped = good.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    expect(&flipped, |e| matches!(e, Error::Checksum { .. }), "a flipped weight byte");
    let tampered = edit_header(&good, |h| h["__metadata__"]["labels"] = "[\"a\"]".into());
    expect(&tampered, |e| matches!(e, Error::Checksum { .. }), "metadata edited without updating the checksum");
    // Invalid JSON in entries (with valid checksums).
    let graph_text = edited(f32_base(), |w| w.metadata.labels = vec!["x".into(); 3]);
    expect(&graph_text, |e| matches!(e, Error::Metadata { key, .. } if key == "labels"), "3 labels for 10 classes");
    let bytes = rechecksum(edit_header(&good, |h| {
        let text = h["__metadata__"]["graph"].as_str().unwrap().replacen("\"conv2d\"", "\"softmax_v9\"", 1);
        h["__metadata__"]["graph"] = text.into();
    }));
    expect(
        &bytes,
        |e| matches!(e, Error::Metadata { key, .. } if key == "graph") && msg(e, "softmax_v9"),
        "unknown op",
    );
    let broken = rechecksum(edit_header(&good, |h| h["__metadata__"]["graph"] = "{\"precision\": ".into()));
    expect(&broken, |e| matches!(e, Error::Metadata { key, .. } if key == "graph"), "truncated graph JSON");
    let labels = rechecksum(edit_header(&good, |h| h["__metadata__"]["labels"] = "{\"a\": 1}".into()));
    expect(&labels, |e| matches!(e, Error::Metadata { key, .. } if key == "labels"), "labels not a list");
}

/// Recomputes the checksum of a hand-edited file the way the SDK defines it, by
/// re-writing it through the writer from its parsed parts.
fn rechecksum(bytes: Vec<u8>) -> Vec<u8> {
    let (mut h, data) = parts(&bytes);
    let meta = h.as_object_mut().unwrap().remove("__metadata__").unwrap();
    let mut entries: Vec<(String, String)> = meta
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "checksum")
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    entries.sort();
    let mut tensors: Vec<(String, serde_json::Value)> =
        h.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    use sha2::Digest;
    let mut s = sha2::Sha256::new();
    for (k, v) in &entries {
        s.update(k.as_bytes());
        s.update([0]);
        s.update(v.as_bytes());
        s.update([0]);
    }
    for (name, t) in &tensors {
        s.update(name.as_bytes());
        s.update([0]);
        s.update(t["dtype"].as_str().unwrap().as_bytes());
        for d in t["shape"].as_array().unwrap() {
            s.update(d.as_u64().unwrap().to_le_bytes());
        }
        let o = t["data_offsets"].as_array().unwrap();
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        s.update(((b - a) as u64).to_le_bytes());
        s.update(&data[a..b]);
    }
    let sum: String = s.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut meta = meta;
    meta["checksum"] = format!("sha256:{sum}").into();
    h["__metadata__"] = meta;
    join(&serde_json::to_vec(&h).unwrap(), &data)
}

#[test]
fn graph_errors() {
    let is_graph = |node: &'static str, text: &'static str| {
        move |e: &Error| matches!(e, Error::Graph { node: n, .. } if n == node) && msg(e, text)
    };
    expect(
        &graph_edit(|g| node_mut(g, "c1").inputs = vec!["c3".into()]),
        is_graph("c1", "cycle"),
        "reads a later node",
    );
    expect(&graph_edit(|g| node_mut(g, "c2").inputs = vec!["c2".into()]), is_graph("c2", "itself"), "reads itself");
    expect(
        &graph_edit(|g| node_mut(g, "c2").inputs = vec!["nope".into()]),
        is_graph("c2", "does not exist"),
        "unknown input",
    );
    expect(&graph_edit(|g| node_mut(g, "c3").name = "c1".into()), is_graph("c1", "used twice"), "duplicate name");
    expect(&graph_edit(|g| g.nodes.clear()), is_graph("graph", "no nodes"), "empty graph");
    expect(&graph_edit(|g| g.output = "missing".into()), is_graph("graph", "missing"), "output not a node");
    expect(&graph_edit(|g| conv_mut(g, "c2").groups = 3), is_graph("c2", "groups"), "groups do not divide");
    expect(
        &graph_edit(|g| conv_mut(g, "c1").kernel = [40, 40]),
        is_graph("c1", "larger than"),
        "kernel larger than input",
    );
    expect(&graph_edit(|g| conv_mut(g, "c1").stride = [0, 1]), is_graph("c1", "stride"), "zero stride");
    expect(&graph_edit(|g| conv_mut(g, "c1").padding = [3, 3]), is_graph("c1", "padding"), "padding >= kernel");
    expect(
        &graph_edit(|g| conv_mut(g, "c1").out_channels = usize::MAX / 2),
        |e| matches!(e, Error::Graph { .. }) && (msg(e, "out of range") || msg(e, "overflow") || msg(e, "groups")),
        "channel count that overflows",
    );
    expect(
        &graph_edit(|g| g.input = [3, 1 << 40, 1 << 40]),
        is_graph("input", "overflows"),
        "input dimension overflow",
    );
    expect(
        &graph_edit(|g| node_mut(g, "add1").inputs = vec!["p1".into(), "c1".into()]),
        is_graph("add1", "different shapes"),
        "add of different shapes",
    );
    expect(
        &graph_edit(|g| node_mut(g, "add1").inputs = vec!["p1".into()]),
        is_graph("add1", "2 input"),
        "add with one input",
    );
    expect(
        &graph_edit(|g| node_mut(g, "lin1").inputs = vec!["p2".into()]),
        is_graph("lin1", "[features, 1, 1]"),
        "linear on a plane",
    );
    expect(
        &graph_edit(|g| node_mut(g, "sc").op = Op::Scale(Scale { factor: f32::NAN, act: Activation::None })),
        |e| matches!(e, Error::Metadata { key, .. } if key == "graph"),
        "NaN scale (written as null)",
    );
    expect(
        &graph_edit(|g| node_mut(g, "c1").quant = Some(QuantParams { scale: 1.0, zero_point: 0 })),
        is_graph("c1", "f32 graph"),
        "quant in an f32 graph",
    );
    let int8 = |f: &dyn Fn(&mut Graph)| edited(int8_base(), |w| f(&mut w.metadata.graph));
    expect(&int8(&|g| g.input_quant = None), is_graph("input", "input_quant"), "int8 without input quantization");
    expect(
        &int8(&|g| node_mut(g, "p1").quant = Some(QuantParams { scale: 0.0, zero_point: 3 })),
        is_graph("p1", "scale"),
        "zero scale",
    );
    expect(
        &int8(&|g| node_mut(g, "c2").quant = None),
        is_graph("c2", "quantization"),
        "int8 node without quantization",
    );
    let wrong_input = edited(f32_base(), |w| w.metadata.preprocessing.input_size = [28, 28]);
    expect(
        &wrong_input,
        |e| matches!(e, Error::Metadata { key, .. } if key == "preprocessing"),
        "preprocessing disagrees with the graph",
    );
}

#[test]
fn tensor_errors() {
    let is_tensor = |name: &'static str, text: &'static str| {
        move |e: &Error| matches!(e, Error::Tensor { name: n, .. } if n == name) && msg(e, text)
    };
    let f = |f: &dyn Fn(&mut ArtifactWriter)| edited(f32_base(), |w| f(w));
    expect(&f(&|w| drop(w.tensors.remove("c2.weight"))), is_tensor("c2.weight", "missing"), "missing weight");
    expect(
        &f(&|w| w.insert("c1.bias", TensorData::i32(&[0; 8], &[8]))),
        is_tensor("c1.bias", "dtype I32"),
        "wrong dtype",
    );
    expect(
        &f(&|w| w.insert("c1.bias", TensorData::f32(&[0.0; 9], &[9]))),
        is_tensor("c1.bias", "shape [9]"),
        "wrong shape",
    );
    expect(
        &f(&|w| w.insert("c1.bias", TensorData::f32(&[0.0; 8], &[2, 4]))),
        is_tensor("c1.bias", "shape [2, 4]"),
        "wrong rank",
    );
    expect(
        &f(&|w| w.insert("zz.extra", TensorData::f32(&[0.0; 8], &[8]))),
        is_tensor("zz.extra", "not used"),
        "extra tensor",
    );
    expect(
        &f(&|w| w.insert("c1.bias", TensorData::f32(&[f32::NAN; 8], &[8]))),
        is_tensor("c1.bias", "non-finite"),
        "NaN bias",
    );
    expect(
        &f(&|w| w.insert("head.weight", TensorData::f32(&[f32::INFINITY; 128], &[1, 1, 8, 16]))),
        is_tensor("head.weight", "non-finite"),
        "infinite weight",
    );
    let q = |f: &dyn Fn(&mut ArtifactWriter)| edited(int8_base(), |w| f(w));
    expect(
        &q(&|w| w.insert("c1.weight_sum", TensorData::i32(&[7; 8], &[8]))),
        is_tensor("c1.weight_sum", "row sums"),
        "wrong row sums",
    );
    expect(
        &q(&|w| w.insert("c1.weight_scale", TensorData::f32(&[-1.0; 8], &[8]))),
        is_tensor("c1.weight_scale", "positive"),
        "negative scale",
    );
    expect(
        &q(&|w| w.insert("c1.weight", TensorData::f32(&[0.0; 216], &[8, 27]))),
        is_tensor("c1.weight", "dtype F32"),
        "f32 weight in an int8 graph",
    );
    expect(
        &q(&|w| drop(w.tensors.remove("c3.weight_scale"))),
        is_tensor("c3.weight_scale", "missing"),
        "missing weight scale",
    );
    // c1: 8 outputs, 3 inputs, 3x3 -> packed [1, 1, 9, 1, 16, 4]; slot (position 0,
    // quad 0, lane 0, channel 0) is used, channel 3 of every lane is padding.
    let packed = |at: usize, v: i8| {
        move |w: &mut ArtifactWriter| {
            let mut t = w.tensors["c1.weight"].clone();
            t.bytes[at] = v as u8;
            w.insert("c1.weight", t);
        }
    };
    expect(&q(&packed(0, 100)), is_tensor("c1.weight", "outside -64..=64"), "an 8-bit weight code");
    expect(&q(&packed(3, 5)), is_tensor("c1.weight", "padding"), "a weight in the packing's padding");
    expect(
        &f(&|w| {
            let mut t = w.tensors["head.weight"].clone();
            t.bytes[4 * 15..4 * 16].copy_from_slice(&1.5f32.to_le_bytes());
            w.insert("head.weight", t);
        }),
        is_tensor("head.weight", "padding"),
        "an f32 weight in an unused lane",
    );
    expect(
        &edited(int8_base(), |w| w.metadata.graph.weight_bits = Some(8)),
        |e| matches!(e, Error::Graph { .. }) && msg(e, "7-bit"),
        "8-bit weights declared",
    );
    // Misaligned: one more byte of header padding shifts every tensor by one byte.
    let good = f32_base().to_bytes().unwrap();
    let (h, data) = parts(&good);
    let mut header = serde_json::to_vec(&h).unwrap();
    while (header.len() + 8) % 8 != 1 {
        header.push(b' ');
    }
    expect(&join_raw(&header, &data), |e| matches!(e, Error::Tensor { .. }) && msg(e, "aligned"), "misaligned tensors");
}

#[test]
fn random_byte_flips_and_cuts_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    let files = [f32_base().to_bytes().unwrap(), int8_base().to_bytes().unwrap()];
    let px = random_rgb8(1, 1);
    let mut accepted = 0;
    for i in 0..1500 {
        let mut b = files[i % 2].clone();
        if rng.gen_bool(0.2) {
            b.truncate(rng.gen_range(0..b.len()));
        }
        for _ in 0..rng.gen_range(1..8) {
            if b.is_empty() {
                break;
            }
            let at = if rng.gen_bool(0.7) { rng.gen_range(0..b.len().min(4096)) } else { rng.gen_range(0..b.len()) };
            b[at] = rng.gen();
        }
        if let Ok(m) = open(&b) {
            accepted += 1;
            let _ = m.session().and_then(|mut s| s.logits_rgb8(&px, 1));
        }
    }
    assert!(accepted < 1500);
}

/// Structured fuzzing: random edits of the graph's numbers with a valid checksum, so
/// the validator (not the checksum) is what stands between the edit and the kernels.
#[test]
fn random_graph_edits_are_rejected_or_run_safely() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(78);
    let px = random_rgb8(3, 2);
    let interesting = [0usize, 1, 2, 3, 4, 7, 8, 9, 31, 32, 33, 64, 1 << 20, usize::MAX];
    let mut ran = 0;
    for i in 0..400 {
        let base = if i % 2 == 0 { f32_base() } else { int8_base() };
        let bytes = edited(base, |w| {
            let g = &mut w.metadata.graph;
            for _ in 0..rng.gen_range(1..4) {
                let n = rng.gen_range(0..g.nodes.len());
                let v = interesting[rng.gen_range(0..interesting.len())];
                match &mut g.nodes[n].op {
                    Op::Conv2d(c) => match rng.gen_range(0..5) {
                        0 => c.out_channels = v,
                        1 => c.kernel[rng.gen_range(0..2)] = v,
                        2 => c.stride[rng.gen_range(0..2)] = v,
                        3 => c.padding[rng.gen_range(0..2)] = v,
                        _ => c.groups = v,
                    },
                    Op::Linear(l) => l.out_features = v,
                    Op::MaxPool(MaxPool { kernel, stride, padding, .. })
                    | Op::AvgPool(AvgPool { kernel, stride, padding, .. }) => match rng.gen_range(0..3) {
                        0 => kernel[rng.gen_range(0..2)] = v,
                        1 => stride[rng.gen_range(0..2)] = v,
                        _ => padding[rng.gen_range(0..2)] = v,
                    },
                    _ => {
                        let other = rng.gen_range(0..g.nodes.len());
                        let name = g.nodes[other].name.clone();
                        g.nodes[n].inputs = vec![name];
                    }
                }
            }
        });
        if let Ok(m) = open(&bytes) {
            ran += 1;
            m.session().unwrap().logits_rgb8(&px, 3).unwrap();
        }
    }
    assert!(ran < 400);
}
