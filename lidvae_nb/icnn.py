"""Input-convex networks and the Brenier maps built from them (Wang et al., 2021, Sec. 3.1).

- :class:`ICNN`: a convex potential ``phi: R^d -> R`` (Eq. 6 of the paper) plus a strongly convex
  quadratic, so that its gradient is strongly monotone and hence injective.
- :class:`BrenierMap`: the map ``u -> grad phi(u)``, computed in closed form (one hand-written
  reverse pass through the non-negative weights), with an autograd reference and an inverse
  through the convex conjugate.
- :class:`ZeroOneLift`: the fixed zero-one matrix ``beta`` (K x D) with ``z -> beta^T z`` injective.
- :class:`LearnedLift`: a learned dense map ``z -> W z + b`` (D x K), kept full rank by clipping
  its singular values to ``[s_min, s_max]`` after every optimiser step
  (:meth:`LearnedLift.project_`).
- :class:`InjectiveDecoder`: the LIDVAE decoder mean ``z -> g2(beta^T g1(z))`` and its inverse.

Non-negative weights come in two parametrisations (``ICNN(weights=...)``): ``"softplus"``,
``softplus(raw) / fan_in``, with a gradient everywhere; and ``"projected"``, the raw weight
itself, clamped at 0 in the forward pass and projected back onto ``W >= 0`` after every optimiser
step (projected gradient, as Amos et al.'s ICNNs and the Keras ``NonNeg`` constraint of the
original TensorFlow code). Both avoid the defect of the original PyTorch code, whose clamp at
0.01 froze every weight initialised below it. Modules with constraints expose ``project_()``;
the trainer calls :func:`project_constraints` after each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ICNN",
    "BrenierMap",
    "ZeroOneLift",
    "LearnedLift",
    "InjectiveDecoder",
    "InverseNotConverged",
    "project_constraints",
]

#: Parametrisations of the non-negative ICNN weights (see :class:`ICNN`).
WEIGHTS = ("softplus", "projected")
#: The lifts ``beta`` between the two Brenier maps (see :class:`InjectiveDecoder`).
LIFTS = ("zero_one", "learned")


class InverseNotConverged(RuntimeError):
    """The conjugate problem ``argmin_u phi(u) - <u, y>`` was not solved to the tolerance."""


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_slope(slope) -> float:
    if not 0.0 < float(slope) < 1.0:
        raise ValueError(f"slope must be in (0, 1), got {slope!r}")
    return float(slope)


def _check_alpha(alpha) -> float:
    if not float(alpha) > 0.0 or not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _check_input(name: str, x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, {dim}), got {type(x)!r}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}), got {tuple(x.shape)}")


def _times_slopes(e: torch.Tensor, s: torch.Tensor, slope: float) -> torch.Tensor:
    """``e * lrelu'(s)`` (``e`` where ``s > 0``, else ``slope * e``), differentiable in ``e`` only.

    The leaky-ReLU backward kernel does it in one pass, several times faster on CPU than
    ``torch.where`` or a mask; ``s`` must not require a gradient.
    """
    return torch.ops.aten.leaky_relu_backward(e, s, slope, False)


def _inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


class ICNN(nn.Module):
    """Strongly convex potential ``phi(u) = icnn(u) + (alpha + softplus(q)) / 2 * |u|^2``.

    ``icnn`` is Eq. 6 of Wang et al.: ``h_1 = lrelu(A_0 u + b_0)^2``, then
    ``h_{l+1} = lrelu(W_l h_l + A_l u)`` for ``l = 1 .. depth - 1`` with ``W_l >= 0``, and a
    scalar last layer ``lrelu(w^T h_depth + a^T u)`` with ``w >= 0`` (leaky-ReLU slope
    ``slope``). Every term is convex in ``u``. The quadratic makes ``phi`` ``alpha``-strongly
    convex: ``alpha`` is a fixed floor, the learnable ``softplus(q)`` starts at ``1 - alpha``
    (when ``alpha < 1``), so that the gradient map starts close to the identity and can still
    contract down to slope ``alpha`` during training.

    ``depth`` is the number of hidden layers (``width`` units each; the first has ``first_width``
    units, by default ``width``). Input (B, dim), output (B,). Only the first layer has a bias: the
    map ``grad phi`` would see biases of later layers only through where their kinks fall, so they
    would get no gradient and never train.

    ``weights`` is the parametrisation of the non-negative weights: ``"softplus"`` (the default),
    ``W = softplus(raw) / fan_in`` with ``raw ~ U(-1, 1)``; or ``"projected"``, ``W = max(raw, 0)``
    with ``raw`` drawn as a Glorot-uniform matrix clipped at 0 and projected onto ``raw >= 0`` by
    :meth:`project_` after every optimiser step. Under scale-free optimisers (Adam, RMSprop) a
    parameter moves by about the learning rate per step whatever its scale, so the ``1 / fan_in``
    of the softplus form makes its weights learn ``fan_in`` times more slowly in absolute terms.
    ``quadratic_init`` is the starting value of the quadratic coefficient ``alpha + softplus(q)``
    (at least ``alpha``; 1 by default, so that the map starts near the identity).
    """

    def __init__(
        self,
        dim: int,
        width: int = 512,
        depth: int = 2,
        slope: float = 0.2,
        alpha: float = 0.1,
        weights: str = "softplus",
        first_width: int | None = None,
        quadratic_init: float = 1.0,
    ):
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.width = _check_int("width", width)
        self.first_width = (
            self.width if first_width is None else _check_int("first_width", first_width)
        )
        self.depth = _check_int("depth", depth)
        self.slope = _check_slope(slope)
        self.alpha = _check_alpha(alpha)
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        self.weights = weights
        if not (math.isfinite(float(quadratic_init)) and float(quadratic_init) >= self.alpha):
            raise ValueError(
                f"quadratic_init must be a finite number >= alpha = {self.alpha}, got "
                f"{quadratic_init!r}"
            )
        # Layer sizes: hidden layer l has widths[l] units (l = 0 .. depth - 1).
        widths = [self.first_width] + [self.width] * (depth - 1)
        self.widths = widths
        # u -> hidden layer l (A_l; b_0 for l = 0 only), l = 0 .. depth - 1, and u -> output (a).
        self.input_layers = nn.ModuleList(
            [nn.Linear(dim, widths[0])] + [nn.Linear(dim, w, bias=False) for w in widths[1:]]
        )
        self.input_out = nn.Linear(dim, 1, bias=False)
        # Raw parameters of the non-negative weights: hidden-to-hidden W_l (l = 1 .. depth - 1),
        # then the output weight w (1 x widths[-1]).
        shapes = [(widths[i], widths[i - 1]) for i in range(1, depth)] + [(1, widths[-1])]
        self.raw_weights = nn.ParameterList([nn.Parameter(torch.empty(*sh)) for sh in shapes])
        start = max(float(quadratic_init) - self.alpha, 1e-3)
        self.raw_quadratic = nn.Parameter(torch.tensor(_inverse_softplus(start)))
        for raw in self.raw_weights:
            if weights == "softplus":
                nn.init.uniform_(raw, -1.0, 1.0)
            else:
                nn.init.xavier_uniform_(raw)
                with torch.no_grad():
                    raw.clamp_(min=0.0)

    # ------------------------------------------------------------------------------ pieces
    def positive_weights(self) -> list[torch.Tensor]:
        """Non-negative weights ``[W_1, ..., W_{depth-1}, w]``: ``softplus(raw) / fan_in``, or
        ``max(raw, 0)`` under the projected parametrisation."""
        if self.weights == "projected":
            return [raw.clamp(min=0.0) for raw in self.raw_weights]
        return [F.softplus(raw) / raw.shape[1] for raw in self.raw_weights]

    @torch.no_grad()
    def project_(self) -> None:
        """Project the raw weights onto ``raw >= 0`` (projected parametrisation; else nothing)."""
        if self.weights == "projected":
            for raw in self.raw_weights:
                raw.clamp_(min=0.0)

    def quadratic_coefficient(self) -> torch.Tensor:
        """``alpha + softplus(q)``: the coefficient of ``|u|^2 / 2`` in ``phi`` (>= alpha)."""
        return self.alpha + F.softplus(self.raw_quadratic)

    def _slopes(self, s: torch.Tensor) -> torch.Tensor:
        """Derivative of the leaky ReLU at ``s`` (1 or ``slope``), as PyTorch defines it at 0."""
        return torch.where(s > 0, torch.ones_like(s), torch.full_like(s, self.slope))

    def _forward_pass(self, u: torch.Tensor):
        """Pre-activations ``[s_0, ..., s_{depth-1}, s_out]`` and the potential (B,)."""
        weights = self.positive_weights()
        pre = []
        s = self.input_layers[0](u)
        pre.append(s)
        h = F.leaky_relu(s, self.slope) ** 2
        for layer, W in zip(self.input_layers[1:], weights[:-1], strict=True):
            s = h @ W.T + layer(u)
            pre.append(s)
            h = F.leaky_relu(s, self.slope)
        s_out = (h @ weights[-1].T + self.input_out(u)).squeeze(-1)
        pre.append(s_out)
        quad = 0.5 * self.quadratic_coefficient() * (u * u).sum(-1)
        return pre, weights, F.leaky_relu(s_out, self.slope) + quad

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The potential ``phi(u)``: (B, dim) -> (B,)."""
        _check_input("u", u, self.dim)
        return self._forward_pass(u)[2]

    def preactivations(self, u: torch.Tensor) -> list[torch.Tensor]:
        """Pre-activations ``[s_0, ..., s_{depth-1}]`` (B, width) and ``s_out`` (B,) at ``u``.

        The map ``grad phi`` jumps where ``s_l`` (``l >= 1``) or ``s_out`` changes sign.
        """
        _check_input("u", u, self.dim)
        return self._forward_pass(u)[0]

    def potential_and_gradient(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(phi(u), grad phi(u))`` with the gradient written out as a reverse pass.

        The leaky-ReLU derivatives are piecewise constant, so this tensor code has the same
        parameter gradients as autograd's double backward, with a single backward pass.
        Shapes (B,) and (B, dim).
        """
        _check_input("u", u, self.dim)
        pre, weights, phi = self._forward_pass(u)
        m_out = self._slopes(pre[-1]).unsqueeze(-1)  # (B, 1)
        grad = m_out * self.input_out.weight  # (B, dim): the term m_out * a
        e = m_out * weights[-1]  # (B, width): d icnn / d h_L
        for layer in range(self.depth - 1, 0, -1):
            delta = e * self._slopes(pre[layer])  # d icnn / d s_layer
            grad = grad + delta @ self.input_layers[layer].weight
            e = delta @ weights[layer - 1]  # d icnn / d h_layer
        s0 = pre[0]
        delta = e * 2.0 * F.leaky_relu(s0, self.slope) * self._slopes(s0)
        grad = grad + delta @ self.input_layers[0].weight
        return phi, grad + self.quadratic_coefficient() * u

    def gradient(self, u: torch.Tensor, lift: ZeroOneLift | None = None) -> torch.Tensor:
        """``grad phi(u)`` alone, the training path of :class:`BrenierMap`: (B, dim) -> (B, dim).

        The same map as :meth:`potential_and_gradient`, cheaper to run and to differentiate:

        * layers ``1 .. depth`` matter only through the signs of their pre-activations (piecewise
          constant), so they run under ``no_grad`` and autograd records nothing for them;
        * with ``lift`` (a :class:`ZeroOneLift` onto ``dim``), the input is ``v`` (B, K) and
          ``u = lift(v)``: every input product ``A u`` is computed as ``(A beta^T) v``, where
          ``A beta^T`` only sums columns of ``A``. The forward products then cost ``K`` instead
          of ``dim`` per unit, and so does their backward pass. Only the reverse products
          ``delta^T A`` keep the full size, since the map's output lives in R^dim.
        """
        if lift is None:
            _check_input("u", u, self.dim)
            fold = None
        else:
            if lift.d != self.dim:
                raise ValueError(f"lift must map onto R^{self.dim}, got a lift onto R^{lift.d}")
            _check_input("v", u, lift.k)
            fold = lift.sum_copies
        slope, weights = self.slope, self.positive_weights()
        first = self.input_layers[0]
        s0 = F.linear(u, first.weight if fold is None else fold(first.weight), first.bias)
        r0 = F.leaky_relu(s0, slope)
        with torch.no_grad():  # only the signs of the later pre-activations are needed
            later = [layer.weight for layer in self.input_layers[1:]] + [self.input_out.weight]
            inputs = F.linear(u, torch.cat(later if fold is None else [fold(A) for A in later]))
            inputs = inputs.split(self.widths[1:] + [1], dim=1)  # A_1 u, ..., then a^T u
            h = r0.square()
            pre = []  # s_1 .. s_{depth-1}
            for W, Au in zip(weights[:-1], inputs[:-1], strict=True):
                pre.append(torch.addmm(Au, h, W.T))
                h = F.leaky_relu(pre[-1], slope)
            s_out = torch.addmm(inputs[-1], h, weights[-1].T)  # (B, 1)
            m_out = torch.full_like(s_out, slope).masked_fill_(s_out > 0, 1.0)
        full_u = u if lift is None else lift.copy(u)
        grad = torch.addcmul(self.quadratic_coefficient() * full_u, m_out, self.input_out.weight)
        e = m_out * weights[-1]  # (B, width): d icnn / d h_{depth}
        for layer in range(self.depth - 1, 0, -1):
            delta = _times_slopes(e, pre[layer - 1], slope)  # d icnn / d s_layer
            grad = torch.addmm(grad, delta, self.input_layers[layer].weight)
            e = delta @ weights[layer - 1]  # d icnn / d h_layer
        # d icnn / d s_0 = e * d(r0^2)/d s0 = 2 r0 * (e * lrelu'(s0))
        delta = _times_slopes(e, s0.detach(), slope) * (r0 + r0)
        return torch.addmm(grad, delta, first.weight)

    def curvature(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c, gamma)`` with Hessian ``A_0^T diag(c) A_0 + gamma I`` at ``u`` (almost everywhere).

        Only the squared first layer is curved; every later layer is piecewise linear in ``u``.
        ``c >= 0`` (B, width) because the weights behind the first layer are non-negative.
        """
        _check_input("u", u, self.dim)
        pre, weights, _ = self._forward_pass(u)
        e = self._slopes(pre[-1]).unsqueeze(-1) * weights[-1]
        for layer in range(self.depth - 1, 0, -1):
            e = (e * self._slopes(pre[layer])) @ weights[layer - 1]
        c = 2.0 * self._slopes(pre[0]) ** 2 * e
        return c, self.quadratic_coefficient()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, width={self.width}, first_width={self.first_width}, "
            f"depth={self.depth}, slope={self.slope}, alpha={self.alpha}, weights={self.weights!r}"
        )


class BrenierMap(nn.Module):
    """The Brenier map ``g(u) = grad phi(u)`` of a strongly convex :class:`ICNN` potential.

    ``alpha``-strong convexity gives ``<g(x) - g(y), x - y> >= alpha |x - y|^2``, so ``g`` is
    injective; its inverse on the range is ``u = argmin_u phi(u) - <u, y>`` (the gradient of the
    convex conjugate). Shapes (B, dim) -> (B, dim).

    ``gradient`` chooses how :meth:`forward` computes the map: ``"closed_form"`` (default, a
    hand-written reverse pass) or ``"autograd"`` (double backward, as the original code; kept as
    the reference and for the cost comparison of chapter 12). Other keyword arguments
    (``weights``, ``first_width``, ``quadratic_init``) go to :class:`ICNN`.
    """

    GRADIENTS = ("closed_form", "autograd")

    def __init__(
        self,
        dim: int,
        width: int = 512,
        depth: int = 2,
        slope: float = 0.2,
        alpha: float = 0.1,
        gradient: str = "closed_form",
        **icnn,
    ):
        super().__init__()
        self.potential_net = ICNN(dim, width, depth, slope, alpha, **icnn)
        self.gradient = gradient

    @property
    def gradient(self) -> str:
        return self._gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        if value not in self.GRADIENTS:
            raise ValueError(f"gradient must be one of {self.GRADIENTS}, got {value!r}")
        self._gradient = value

    @property
    def dim(self) -> int:
        return self.potential_net.dim

    @property
    def alpha(self) -> float:
        return self.potential_net.alpha

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``grad phi(u)``: (B, dim) -> (B, dim). In closed form (the default) it works under
        ``torch.no_grad``; with ``gradient="autograd"`` it needs a double backward to train."""
        if self._gradient == "autograd":
            return self.forward_autograd(u)
        return self.potential_net.gradient(u)

    def forward_lifted(self, v: torch.Tensor, lift: ZeroOneLift) -> torch.Tensor:
        """``grad phi(lift(v))``: (B, K) -> (B, dim). In closed form the lift is folded into the
        input products (:meth:`ICNN.gradient`); with autograd it is applied first."""
        if self._gradient == "autograd":
            return self.forward_autograd(lift(v))
        return self.potential_net.gradient(v, lift)

    def potential(self, u: torch.Tensor) -> torch.Tensor:
        """``phi(u)``: (B, dim) -> (B,)."""
        return self.potential_net(u)

    def forward_autograd(self, u: torch.Tensor) -> torch.Tensor:
        """Reference ``grad phi(u)`` by autograd with ``create_graph=True`` (as the original code).

        Training through it needs a double backward. (B, dim) -> (B, dim).
        """
        _check_input("u", u, self.dim)
        with torch.enable_grad():
            if not u.requires_grad:
                u = u.detach().requires_grad_(True)
            phi = self.potential_net(u)
            (grad,) = torch.autograd.grad(phi.sum(), u, create_graph=True)
        return grad

    def jacobian(self, u: torch.Tensor, method: str = "closed_form") -> torch.Tensor:
        """Jacobian of the map (the Hessian of ``phi``), (B, dim) -> (B, dim, dim).

        ``method="closed_form"``: ``A_0^T diag(c) A_0 + gamma I`` from :meth:`ICNN.curvature`;
        ``"autograd"``: differentiate :meth:`forward_autograd` row by row (slow, a reference).
        """
        _check_input("u", u, self.dim)
        if method == "closed_form":
            c, gamma = self.potential_net.curvature(u)
            A = self.potential_net.input_layers[0].weight
            eye = torch.eye(self.dim, dtype=u.dtype, device=u.device)
            return torch.einsum("ki,bk,kj->bij", A, c, A) + gamma * eye
        if method == "autograd":
            with torch.enable_grad():
                x = u.detach().requires_grad_(True)
                g = self.forward_autograd(x)
                rows = [
                    torch.autograd.grad(g[:, i].sum(), x, retain_graph=True)[0]
                    for i in range(self.dim)
                ]
            return torch.stack(rows, 1)
        raise ValueError(f"method must be 'closed_form' or 'autograd', got {method!r}")

    def _hessian_vector(self, c, gamma, v):
        A = self.potential_net.input_layers[0].weight
        return ((v @ A.T) * c) @ A + gamma * v

    @torch.no_grad()
    def inverse(
        self,
        y: torch.Tensor,
        tol: float | None = None,
        max_iter: int = 100,
        cg_iter: int | None = None,
        u0: torch.Tensor | None = None,
        return_residual: bool = False,
        patience: int = 20,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``g^{-1}(y) = argmin_u phi(u) - <u, y>`` by batched Newton-CG: (B, dim) -> (B, dim).

        The objective is ``alpha``-strongly convex and piecewise quadratic; Newton steps use the
        closed-form Hessian (conjugate gradients, matrix free) and a backtracking line search,
        on the rows not yet solved. A row is solved when ``|g(u) - y| <= tol * (1 + |y|)``
        (default tolerance 1e-10 in float64, 1e-5 otherwise); it is given up when its residual
        has not halved in ``patience`` Newton steps, which happens when ``y`` falls in a gap of
        the range (the leaky-ReLU kinks make ``g`` jump; ``u`` is then the conjugate's answer,
        the point where the jump happens). Raises :class:`InverseNotConverged` if any row is
        unsolved; with ``return_residual=True`` it returns ``(u, |g(u) - y|)`` instead, (B,)
        residuals for the caller to judge.
        """
        _check_input("y", y, self.dim)
        if tol is None:
            tol = 1e-10 if y.dtype == torch.float64 else 1e-5
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        _check_int("max_iter", max_iter)
        _check_int("patience", patience)
        cg_iter = _check_int("cg_iter", cg_iter) if cg_iter is not None else self.dim + 1
        net = self.potential_net
        y = y.detach()
        if u0 is None:
            u = y / net.quadratic_coefficient()
        else:
            _check_input("u0", u0, self.dim)
            u = u0.detach().clone()
        threshold = tol * (1.0 + y.norm(dim=1))
        phi, g = net.potential_and_gradient(u)
        f, r = phi - (u * y).sum(1), g - y
        res = r.norm(dim=1)
        best = res.clone()
        since_best = torch.zeros_like(res, dtype=torch.long)
        for _ in range(max_iter):
            rows = torch.nonzero((res > threshold) & (since_best < patience)).squeeze(1)
            if rows.numel() == 0:
                break
            u_new, f_new, r_new, stuck = self._newton_step(
                u[rows], y[rows], f[rows], r[rows], cg_iter
            )
            u[rows], f[rows], r[rows] = u_new, f_new, r_new
            res[rows] = r_new.norm(dim=1)
            improved = res < 0.5 * best
            best = torch.where(improved, res, best)
            since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
            since_best[rows[stuck]] = patience  # no step decreased the objective: give up
        if return_residual:
            return u, res
        if (res > threshold).any():
            worst = int(torch.argmax(res / threshold))
            raise InverseNotConverged(
                f"inverse did not converge for {int((res > threshold).sum())} of {len(res)} "
                f"rows: row {worst} has |g(u) - y| = {res[worst].item():.3g} > "
                f"{threshold[worst].item():.3g}; y may lie in a gap of the map's range (its "
                "leaky-ReLU kinks make grad phi jump)"
            )
        return u

    def _newton_step(self, u, y, f, r, cg_iter):
        """One damped Newton step on ``f(u) = phi(u) - <u, y>`` per row: new ``(u, f, r)`` and
        the rows where 30 halvings of the step found no decrease."""
        net = self.potential_net
        res = r.norm(dim=1)
        c, gamma = net.curvature(u)
        p = self._conjugate_gradients(c, gamma, -r, cg_iter, res)
        slope = (r * p).sum(1)  # directional derivative, < 0
        step = torch.ones_like(f)
        todo = torch.ones_like(f, dtype=torch.bool)
        rounding = 16 * torch.finfo(f.dtype).eps
        for _ in range(30):
            u_try = u + step.unsqueeze(1) * p
            phi_t, g_t = net.potential_and_gradient(u_try)
            f_t = phi_t - (u_try * y).sum(1)
            r_t = g_t - y
            # Armijo on the objective or, where f cannot resolve the decrease in floating point
            # (near the solution), a halving of the residual with f unchanged to rounding.
            armijo = f_t <= f + 1e-4 * step * slope
            flat = f_t <= f + rounding * (1.0 + f.abs())
            ok = todo & (armijo | (flat & (r_t.norm(dim=1) <= 0.5 * res)))
            u = torch.where(ok.unsqueeze(1), u_try, u)
            f = torch.where(ok, f_t, f)
            r = torch.where(ok.unsqueeze(1), r_t, r)
            todo = todo & ~ok
            if not todo.any():
                break
            step = torch.where(todo, 0.5 * step, step)
        return u, f, r, todo

    def _conjugate_gradients(self, c, gamma, b, n_iter, b_norm):
        """Batched CG for ``H x = b`` with ``H = A^T diag(c) A + gamma I``, to ``1e-3 |b|``."""
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rr = (r * r).sum(1)
        stop = (1e-3 * b_norm).clamp_min(torch.finfo(b.dtype).tiny) ** 2
        for _ in range(n_iter):
            if (rr <= stop).all():
                break
            Hp = self._hessian_vector(c, gamma, p)
            a = rr / (p * Hp).sum(1).clamp_min(torch.finfo(b.dtype).tiny)
            a = torch.where(rr > stop, a, torch.zeros_like(a))
            x = x + a.unsqueeze(1) * p
            r = r - a.unsqueeze(1) * Hp
            rr_new = (r * r).sum(1)
            p = r + (rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny)).unsqueeze(1) * p
            rr = rr_new
        return x


class _SumCopies(torch.autograd.Function):
    """``x beta^T`` for the zero-one lift (column ``j`` of ``x`` adds to column ``j mod k``), by
    views of ``x`` instead of a matrix product; its backward writes each column of the gradient
    once, without the zero-filled temporaries of slicing or padding. (..., D) -> (..., K)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:
        d = x.shape[-1]
        full = d - d % k
        ctx.k, ctx.d = k, d
        out = x[..., :full].unflatten(-1, (full // k, k)).sum(-2)
        if full < d:
            out[..., : d - full] += x[..., full:]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k, d = ctx.k, ctx.d
        full = d - d % k
        out = grad.new_empty(*grad.shape[:-1], d)
        out[..., :full].unflatten(-1, (full // k, k)).copy_(grad.unsqueeze(-2))
        out[..., full:] = grad[..., : d - full]
        return out, None


class ZeroOneLift(nn.Module):
    """The fixed zero-one matrix ``beta`` (K x D, K <= D): ``z -> beta^T z`` copies inputs.

    Output ``j`` copies input ``j mod K``, so every input is copied ``D // K`` or ``D // K + 1``
    times; ``beta`` has full row rank and the lift is injective, with left inverse "average the
    copies". A buffer, not a parameter. Shapes (B, K) -> (B, D).
    """

    def __init__(self, k: int, d: int):
        super().__init__()
        self.k = _check_int("k", k)
        self.d = _check_int("d", d)
        if k > d:
            raise ValueError(f"k must be <= d for an injective lift, got k={k}, d={d}")
        index = torch.arange(d) % k
        beta = torch.zeros(k, d)
        beta[index, torch.arange(d)] = 1.0
        self.register_buffer("beta", beta)
        self.register_buffer("counts", beta.sum(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``beta^T z`` row-wise: (B, K) -> (B, D)."""
        _check_input("z", z, self.k)
        return z @ self.beta.to(z.dtype)

    def copy(self, z: torch.Tensor) -> torch.Tensor:
        """The lift by tiling instead of a matrix product (same values): (..., K) -> (..., D)."""
        return z.tile(-(-self.d // self.k))[..., : self.d]

    def sum_copies(self, x: torch.Tensor) -> torch.Tensor:
        """``x beta^T``: each input's copies summed, (..., D) -> (..., K), in O(D) per row."""
        return _SumCopies.apply(x, self.k)

    def left_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Average the copies of each input, ``(beta beta^T)^{-1} beta x``: (B, D) -> (B, K)."""
        _check_input("x", x, self.d)
        return (x @ self.beta.to(x.dtype).T) / self.counts.to(x.dtype)

    def extra_repr(self) -> str:
        return f"k={self.k}, d={self.d}"


class LearnedLift(nn.Module):
    """A learned injective affine map ``z -> W z + b`` from R^K to R^D (K <= D), the ``beta`` of
    Wang et al.'s Definition 3 left free, as their Appendix allows any full-rank ``beta``.

    ``W`` (D x K) and ``b`` (D,) are parameters (``nn.Linear``'s initialisation). Full column rank
    is kept by :meth:`project_`, which the trainer calls after every optimiser step: it clips the
    singular values of ``W`` to ``[s_min, s_max]`` (as the original TensorFlow code meant to; there
    the clipped matrix was written into a temporary list and never reached the layer). Between two
    projections ``W`` is whatever the last step made it, so :meth:`smallest_singular_value` lets a
    caller check. Shapes (B, K) -> (B, D).
    """

    def __init__(self, k: int, d: int, s_min: float = 1e-5, s_max: float = 10.0):
        super().__init__()
        self.k = _check_int("k", k)
        self.d = _check_int("d", d)
        if k > d:
            raise ValueError(f"k must be <= d for an injective lift, got k={k}, d={d}")
        if not (0.0 < float(s_min) < float(s_max) and math.isfinite(float(s_max))):
            raise ValueError(
                f"need 0 < s_min < s_max < inf for the singular values, got s_min={s_min!r}, "
                f"s_max={s_max!r}"
            )
        self.s_min, self.s_max = float(s_min), float(s_max)
        self.linear = nn.Linear(k, d)
        self.project_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``W z + b`` row-wise: (B, K) -> (B, D)."""
        _check_input("z", z, self.k)
        return self.linear(z)

    def singular_values(self) -> torch.Tensor:
        """The K singular values of ``W``, largest first."""
        return torch.linalg.svdvals(self.linear.weight.detach())

    def smallest_singular_value(self) -> float:
        """The smallest singular value of ``W``: > 0 exactly when the lift is injective."""
        return float(self.singular_values()[-1])

    @torch.no_grad()
    def project_(self) -> None:
        """Clip the singular values of ``W`` to ``[s_min, s_max]`` (no-op when they lie inside)."""
        W = self.linear.weight
        s = torch.linalg.svdvals(W)
        if float(s[-1]) >= self.s_min and float(s[0]) <= self.s_max:
            return
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        W.copy_((U * s.clamp(self.s_min, self.s_max)) @ Vh)

    def left_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """The least-squares ``z`` with ``W z + b`` closest to ``x``: exact on the range of the
        lift. (B, D) -> (B, K)."""
        _check_input("x", x, self.d)
        W = self.linear.weight.to(x.dtype)
        rhs = (x - self.linear.bias.to(x.dtype)).T
        return torch.linalg.lstsq(W, rhs).solution.T

    def extra_repr(self) -> str:
        return f"k={self.k}, d={self.d}, s_min={self.s_min}, s_max={self.s_max}"


class InjectiveDecoder(nn.Module):
    """LIDVAE decoder mean ``z -> g2(beta^T g1(z))`` (Wang et al., Definition 3).

    ``g1`` is a :class:`BrenierMap` on R^K, ``beta`` a :class:`ZeroOneLift` (``lift="zero_one"``,
    the default) or a :class:`LearnedLift` (``lift="learned"``), ``g2`` a :class:`BrenierMap` on
    R^D: injective in ``z`` as a composition of injective maps. ``latent_width`` sizes ``g1``
    (default ``width``), ``data_width`` the first layer of ``g2`` (default ``width``); ``weights``
    and ``quadratic_init`` go to both ICNNs. Returns the pre-activation of the likelihood
    (Bernoulli logits, Gaussian mean): (B, K) -> (B, D).
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        width: int = 512,
        depth: int = 2,
        slope: float = 0.2,
        alpha: float = 0.1,
        latent_width: int | None = None,
        lift: str = "zero_one",
        data_width: int | None = None,
        weights: str = "softplus",
        quadratic_init: float = 1.0,
    ):
        super().__init__()
        if lift not in LIFTS:
            raise ValueError(f"lift must be one of {LIFTS}, got {lift!r}")
        self.lift = (
            ZeroOneLift(latent_dim, data_dim)
            if lift == "zero_one"
            else LearnedLift(latent_dim, data_dim)
        )
        latent_width = width if latent_width is None else latent_width
        icnn = {"weights": weights, "quadratic_init": quadratic_init}
        self.g1 = BrenierMap(latent_dim, latent_width, depth, slope, alpha, **icnn)
        self.g2 = BrenierMap(data_dim, width, depth, slope, alpha, first_width=data_width, **icnn)
        #: fold the zero-one lift into g2's input products (same map, fewer operations; chapter 12)
        self.fold_lift = True

    @property
    def latent_dim(self) -> int:
        return self.lift.k

    @property
    def data_dim(self) -> int:
        return self.lift.d

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``g2(beta^T g1(z))``: (B, K) -> (B, D). With the zero-one lift and ``fold_lift`` (the
        default) the closed-form ``g2`` folds the lift into its input products
        (:meth:`ICNN.gradient`)."""
        _check_input("z", z, self.latent_dim)
        if self.fold_lift and isinstance(self.lift, ZeroOneLift):
            return self.g2.forward_lifted(self.g1(z), self.lift)
        return self.g2(self.lift(self.g1(z)))

    def inverse(self, x: torch.Tensor, **solver) -> torch.Tensor:
        """Recover ``z`` from a decoder output ``x = g2(beta^T g1(z))``: (B, D) -> (B, K).

        Inverts ``g2`` through its conjugate, ``beta^T`` by its left inverse (averaging the copies,
        or least squares for the learned lift) and ``g1`` through its conjugate; ``solver`` goes
        to :meth:`BrenierMap.inverse`.
        """
        _check_input("x", x, self.data_dim)
        return self.g1.inverse(self.lift.left_inverse(self.g2.inverse(x, **solver)), **solver)


def project_constraints(module: nn.Module) -> nn.Module:
    """Call ``project_()`` on every submodule that has one (the projected ICNN weights, the
    learned lift's singular values): the trainer does this after each optimiser step. Returns
    ``module``."""
    for m in module.modules():
        project = getattr(m, "project_", None)
        if callable(project):
            project()
    return module


def set_gradient(module: nn.Module, gradient: str) -> nn.Module:
    """Switch every :class:`BrenierMap` inside ``module`` to ``gradient`` ('closed_form' or
    'autograd'); returns ``module``."""
    if gradient not in BrenierMap.GRADIENTS:
        raise ValueError(f"gradient must be one of {BrenierMap.GRADIENTS}, got {gradient!r}")
    for m in module.modules():
        if isinstance(m, BrenierMap):
            m.gradient = gradient
    return module
