//! Every key an expert kind accepts changes the expert it builds: no key is accepted and
//! then ignored. The keys come from the config structs (`ExpertSection::keys`), so a key
//! added there without a case here fails the test.

use mixrank_data::config::model::{ExpertKind, ExpertSection, ModelSection};
use mixrank_engine::RefOps;
use mixrank_model::expert::{expanded, Expert};
use rand::rngs::StdRng;
use rand::SeedableRng;

const D_IN: usize = 10;
const EXPERT_DIM: usize = 6;
const BATCH: usize = 4;

/// The experts an entry stands for, and the first one's output in training mode, built
/// from the same seed.
fn build(entry: &str) -> (usize, Vec<f32>) {
    let m: ModelSection =
        toml::from_str(&format!("architecture = \"mmoe\"\nexpert_dim = {EXPERT_DIM}\n[[experts]]\n{entry}"))
            .unwrap_or_else(|e| panic!("{entry}: {e}"));
    let experts = expanded(&m);
    let ops = RefOps;
    let mut e = Expert::new(experts[0], D_IN, EXPERT_DIM, &ops, BATCH, &mut StdRng::seed_from_u64(7)).unwrap();
    e.visit_net(&mut |l| {
        l.set_training(true);
        l.set_dropout_step(1);
    });
    let x: Vec<f32> = (0..BATCH * D_IN).map(|i| ((i * 37 % 19) as f32 - 9.0) / 6.0).collect();
    (experts.len(), e.forward(&ops, &x, BATCH).unwrap()[..BATCH * EXPERT_DIM].to_vec())
}

/// An expert kind, its base entry, and for every key a line that changes it from the base.
type KeyCase = (ExpertKind, &'static str, &'static [(&'static str, &'static str)]);

#[test]
fn every_expert_key_changes_the_expert() {
    let cases: [KeyCase; 4] = [
        (
            ExpertKind::Dcnv2,
            "kind = \"dcnv2\"\nhidden = [8]",
            &[
                ("count", "count = 2"),
                ("hidden", "hidden = [5]"),
                ("activation", "activation = \"tanh\""),
                ("dropout", "dropout = 0.5"),
                ("cross_layers", "cross_layers = 1"),
                ("low_rank", "low_rank = 2"),
                ("structure", "structure = \"parallel\""),
            ],
        ),
        (
            ExpertKind::Masknet,
            "kind = \"masknet\"\nstructure = \"parallel\"\nblocks = 2\nblock_dim = 4",
            &[
                ("count", "count = 2"),
                ("hidden", "hidden = [5]"),
                ("activation", "activation = \"tanh\""),
                ("dropout", "dropout = 0.5"),
                ("structure", "structure = \"stacked\""),
                ("blocks", "blocks = 3"),
                ("block_dim", "block_dim = 3"),
                ("reduction_ratio", "reduction_ratio = 0.5"),
            ],
        ),
        (
            ExpertKind::Finalmlp,
            "kind = \"finalmlp\"\nhidden = [8]",
            &[
                ("count", "count = 2"),
                ("hidden", "hidden = [5]"),
                ("activation", "activation = \"tanh\""),
                ("dropout", "dropout = 0.5"),
                ("stream2", "stream2 = [3]"),
                ("heads", "heads = 2"),
            ],
        ),
        (
            ExpertKind::Mlp,
            "kind = \"mlp\"\nhidden = [8]",
            &[
                ("count", "count = 2"),
                ("hidden", "hidden = [5]"),
                ("activation", "activation = \"tanh\""),
                ("dropout", "dropout = 0.5"),
            ],
        ),
    ];
    assert_eq!(cases.map(|c| c.0), ExpertKind::ALL, "a case per kind");
    for (kind, base, changes) in cases {
        let mut covered: Vec<&str> = changes.iter().map(|c| c.0).collect();
        covered.sort();
        let mut keys = ExpertSection::keys(kind).to_vec();
        keys.sort();
        assert_eq!(covered, keys, "{kind}: every accepted key needs a case");
        let (n0, y0) = build(base);
        assert_eq!(n0, 1);
        for (key, line) in changes {
            // The line replaces the base's own value of the key, if it has one.
            let entry: Vec<&str> = base.lines().filter(|l| !l.starts_with(&format!("{key} ="))).collect();
            let (n, y) = build(&format!("{}\n{line}", entry.join("\n")));
            assert!(n != n0 || y != y0, "{kind}: `{line}` builds the same expert as the base");
        }
    }
}
