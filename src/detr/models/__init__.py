"""The DETR of the paper (:mod:`.detr`), its parts (:mod:`.backbone`, :mod:`.transformer`,
:mod:`.position_encoding`), shared layers (:mod:`.layers`), and the registered factories
(:mod:`.registry`, :mod:`.factories`). Import from the modules (``detr.models.detr``) or from
``detr`` itself; this package file imports nothing, so that any module can be imported first.
"""
