//! Graph well-formedness: names, references, arity, shapes, sizes. Runs on every open,
//! before any kernel sees the graph, with checked arithmetic throughout: a hostile file
//! can make the numbers anything.

use std::collections::HashMap;

use super::layers::WEIGHT_BITS;
use super::schema::{Graph, Node, Precision, QuantParams, INPUT_NAME};
use crate::{Error, Result};

/// Largest accepted spatial size or channel count.
pub const MAX_DIM: usize = 1 << 14;
/// Largest accepted value (elements per image).
pub const MAX_VALUE_ELEMENTS: usize = 1 << 24;
/// Largest accepted dot-product length: with u8 x i8 products (at most 255 * 128) an
/// i32 accumulator cannot overflow below 2^16 terms.
pub const MAX_REDUCTION: usize = 1 << 16;
/// Largest accepted number of nodes.
pub const MAX_NODES: usize = 4096;

/// The shape `[c, h, w]` of one image's value.
pub type Shape = [usize; 3];

/// What validation learned about each node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// Value indices of the inputs: 0 is the graph input, `i + 1` is node `i`'s output.
    pub inputs: Vec<usize>,
    /// Shapes of the inputs.
    pub input_shapes: Vec<Shape>,
    /// Output shape.
    pub shape: Shape,
}

/// The validated graph's shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphInfo {
    /// Per node, in order.
    pub nodes: Vec<NodeInfo>,
    /// Index of the output node.
    pub output: usize,
}

fn elements(node: &str, s: Shape) -> Result<usize> {
    let n = s
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::graph(node, format!("shape {s:?} overflows")))?;
    if s.contains(&0) || s.iter().any(|&d| d > MAX_DIM) || n > MAX_VALUE_ELEMENTS {
        return Err(Error::graph(
            node,
            format!(
                "shape {s:?} is out of range (each dimension 1..={MAX_DIM}, at most {MAX_VALUE_ELEMENTS} elements)"
            ),
        ));
    }
    Ok(n)
}

fn check_quant(node: &str, q: &QuantParams) -> Result<()> {
    if !(q.scale.is_finite() && q.scale > 0.0 && q.scale < 1e30) {
        return Err(Error::graph(node, format!("quantization scale {} must be finite and positive", q.scale)));
    }
    Ok(())
}

fn output_shape(node: &Node, ins: &[Shape]) -> Result<Shape> {
    let name = node.name.as_str();
    let arity = node.op.arity();
    if ins.len() != arity {
        return Err(Error::graph(name, format!("{} takes {arity} input(s), got {}", node.op.kind(), ins.len())));
    }
    let shape = node.op.output_shape(name, ins)?;
    elements(name, shape)?;
    Ok(shape)
}

/// Checks the graph and computes every value's shape.
pub fn validate_graph(g: &Graph) -> Result<GraphInfo> {
    let gname = "graph";
    if g.nodes.is_empty() {
        return Err(Error::graph(gname, "has no nodes"));
    }
    if g.nodes.len() > MAX_NODES {
        return Err(Error::graph(gname, format!("has {} nodes (at most {MAX_NODES})", g.nodes.len())));
    }
    elements(INPUT_NAME, g.input)?;
    let int8 = g.precision == Precision::Int8;
    match (&g.input_quant, int8) {
        (Some(q), true) => check_quant(INPUT_NAME, q)?,
        (None, true) => return Err(Error::graph(INPUT_NAME, "an int8 graph needs input_quant")),
        (Some(_), false) => return Err(Error::graph(INPUT_NAME, "an f32 graph has no input_quant")),
        (None, false) => {}
    }
    match (g.weight_bits, int8) {
        (Some(WEIGHT_BITS), true) | (None, false) => {}
        (bits, true) => {
            return Err(Error::graph(
                gname,
                format!("int8 weights must be {WEIGHT_BITS}-bit (weight_bits), got {bits:?}"),
            ))
        }
        (Some(_), false) => return Err(Error::graph(gname, "an f32 graph has no weight_bits")),
    }
    // Names defined so far -> value index. Nodes may only read values defined before
    // them, which is also what rules out cycles.
    let all: HashMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let mut defined: HashMap<&str, usize> = HashMap::from([(INPUT_NAME, 0)]);
    let mut shapes: Vec<Shape> = vec![g.input];
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let name = node.name.as_str();
        if name.is_empty() || name.len() > 200 || name.contains(['/', '\0']) {
            return Err(Error::graph(gname, format!("node {i} has an invalid name {name:?}")));
        }
        if defined.contains_key(name) {
            return Err(Error::graph(name, "the name is used twice (or is the reserved name `input`)"));
        }
        let mut inputs = Vec::with_capacity(node.inputs.len());
        let mut input_shapes = Vec::with_capacity(node.inputs.len());
        for inp in &node.inputs {
            let Some(&v) = defined.get(inp.as_str()) else {
                let why = match all.get(inp.as_str()) {
                    Some(&j) if j == i => "itself (a cycle)".to_string(),
                    Some(_) => format!("`{inp}`, which comes later: the graph has a cycle or is out of order"),
                    None => format!("`{inp}`, which does not exist"),
                };
                return Err(Error::graph(name, format!("reads {why}")));
            };
            inputs.push(v);
            input_shapes.push(shapes.get(v).copied().unwrap_or([0; 3]));
        }
        let shape = output_shape(node, &input_shapes)?;
        match (&node.quant, int8) {
            (Some(q), true) => check_quant(name, q)?,
            (Some(_), false) => return Err(Error::graph(name, "an f32 graph has no quantization parameters")),
            (None, true) if !(node.name == g.output && node.op.has_weights()) => {
                return Err(Error::graph(name, "int8 graph: the node needs output quantization parameters"));
            }
            _ => {}
        }
        defined.insert(name, i + 1);
        shapes.push(shape);
        nodes.push(NodeInfo { inputs, input_shapes, shape });
    }
    let output = match defined.get(g.output.as_str()) {
        Some(&v) if v > 0 => v - 1,
        _ => return Err(Error::graph(gname, format!("output `{}` is not a node", g.output))),
    };
    Ok(GraphInfo { nodes, output })
}
