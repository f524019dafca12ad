"""featureforge-multifaceted: multifaceted feature visualization (Nguyen, Yosinski & Clune 2016).

- ``collect``: one out-of-core pass over a store keeping each latent's top rows, a uniform sample
  of its firing rows and an activation histogram;
- ``facets``: PCA + k-means (k by silhouette, checked against a Gaussian null) over a unit's top
  examples, prototypes, token counts; ``live_embed`` embeds examples with the live model instead;
- the ``facets`` evaluator and ``featureforge dashboard``: per-latent facets and a self-contained
  HTML site that loads one feature's data at a time (``dashboard/``);
- ``vision`` / ``synthesis`` and ``featureforge facets-vision``: facets of a unit of a torch image
  model and one synthetic image per facet;
- ``ppgn`` / ``ppgn_sampler`` / ``ppgn_facets``: Plug & Play Generative Networks (a generator and a
  DAE prior on a feature layer, chains conditioned on a class, unit or dictionary latent), used by
  ``facets-vision --method ppgn|both``;
- ``splitting``: do a narrow dictionary's facets line up with a wider one's latents?

The testbeds the method is measured on (planted facets, the digits CNN) are featureforge-testbeds'.

Importing this package is cheap; torch and scikit-learn load inside the functions that use them.
"""

__version__ = "0.1.0"
