//! What a graph costs per image: multiply-accumulates and weights. The one formula for
//! both; `trainer compile` records it in [`super::Quality`], `trainer prune` plans with it.

use super::validate::validate_graph;
use super::Graph;
use crate::Result;

/// The arithmetic and storage of one image's forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphCost {
    /// Multiply-accumulates of the weighted layers (convolutions and linear layers).
    pub macs: u64,
    /// Weights and biases of those layers.
    pub parameters: u64,
}

/// The cost of `graph` (validated first: an invalid graph is an error, not a guess).
pub fn graph_cost(graph: &Graph) -> Result<GraphCost> {
    let info = validate_graph(graph)?;
    let mut cost = GraphCost::default();
    for (node, ni) in graph.nodes.iter().zip(&info.nodes) {
        let Some(layer) = node.op.layer(&ni.input_shapes) else { continue };
        let [_, h, w] = ni.shape;
        cost.macs += (layer.logical_len() * h * w) as u64;
        cost.parameters += (layer.logical_len() + layer.out) as u64;
    }
    Ok(cost)
}
