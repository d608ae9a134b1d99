//! Sparse features: [`EmbeddingCollection`] (lookups and sparse gradients).

mod collection;

pub use collection::{
    EmbeddingCollection, EmbeddingCollectionConfig, EmbeddingTable, FeatureConfig, FeatureInput, TableConfig,
};
